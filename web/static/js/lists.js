// The flows list's small behaviours (no inline scripts): a submit button with data-confirm asks first.
"use strict";
document.addEventListener("submit", (event) => {
  const question = event.submitter && event.submitter.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
});
