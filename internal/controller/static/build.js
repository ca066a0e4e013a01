// A build's page follows the build without reloading: the live log's
// chunks are appended as text (never as HTML), and the details (status,
// timeline, operations) are fetched again, as the server renders them,
// whenever the build's state changes.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
	const live = document.getElementById("live");
	if (!live || live.dataset.done === "true" || !window.EventSource) return;
	const log = document.getElementById("live-log");
	let op = null;
	for (const line of log.textContent.split("\n")) {
		const m = /^--- (.*) ---$/.exec(line);
		if (m) op = m[1];
	}
	const refresh = async () => {
		const r = await fetch(live.dataset.details, { credentials: "same-origin" });
		if (r.ok) document.getElementById("details").innerHTML = await r.text();
	};
	const es = new EventSource(live.dataset.stream + "?after=" + encodeURIComponent(live.dataset.after));
	es.addEventListener("log", (e) => {
		const c = JSON.parse(e.data);
		const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
		if (c.operation !== op) {
			op = c.operation;
			log.append(document.createTextNode("--- " + op + " ---\n"));
		}
		log.append(document.createTextNode(c.text));
		if (atEnd) log.scrollTop = log.scrollHeight;
	});
	es.addEventListener("state", (e) => {
		const s = JSON.parse(e.data);
		document.getElementById("live-truncated").hidden = !s.truncated;
		refresh();
	});
	es.addEventListener("done", () => { es.close(); live.dataset.done = "true"; refresh(); });
});
