"use strict";
// A refused token comes back as /login?refused=1: say so.
document.getElementById("refused").hidden = !new URLSearchParams(location.search).has("refused");
