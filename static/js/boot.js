/* Loaded first and in the <head>, without defer: marks the document as scripted before anything
   paints, so the CSS can show one tab panel at a time (without JavaScript every panel shows). */
document.documentElement.classList.add("js");
