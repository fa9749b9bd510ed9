// The console's own small behaviours, shared by every page (no inline scripts).
"use strict";
document.addEventListener("change", (event) => {
  // <select data-autosubmit>: choosing an option sends its form (the workspace switcher).
  if (event.target.matches("select[data-autosubmit]")) event.target.form.requestSubmit();
});
