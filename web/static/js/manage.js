// Management pages: copy buttons for what is shown once, and confirmations before destructive posts.
"use strict";
document.addEventListener("click", async (event) => {
  // <button data-copy="ID">: copies the value of the input #ID (a new API key, an invitation link).
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const field = document.getElementById(button.dataset.copy);
  if (!field) return;
  field.select();
  try {
    await navigator.clipboard.writeText(field.value);
  } catch {
    document.execCommand("copy"); // older browsers, or a page not served over a secure context
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
});
document.addEventListener("submit", (event) => {
  // <form data-confirm="question">: sent only if the person confirms.
  const question = event.target.dataset && event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});
