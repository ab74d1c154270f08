/* spikect page: upload, study list, NiiVue viewer (or server-rendered slices), results panel.
   Plain JS, no framework and nothing from the network but this server's API. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const WINDOWS = { lung: [-1350, 150], mediastinal: [-135, 215] }; // W1500/L-600, W350/L40
  // RAS voxel axis the slice slider moves in each NiiVue view (2 = inferior -> superior)
  const AXIS = { axial: 2, coronal: 1, sagittal: 0, multi: 2 };
  const VIEW_NAMES = { axial: "Axial", coronal: "Coronal", sagittal: "Sagittal", multi: "Axial" };
  const FILE_LABELS = {
    "lung.nii.gz": "Lung mask · NIfTI",
    "infection.nii.gz": "Infection mask · NIfTI",
    "lung.png": "Lung mask · PNG",
    "infection.png": "Infection mask · PNG",
    "overlay.png": "Overlay · PNG",
    "report.json": "Report · JSON",
    "ct.nii.gz": "CT scan · NIfTI",
  };
  const FORMATS = { dicom: "DICOM", nifti: "NIfTI", image: "image" };

  const state = {
    token: sessionStorage.getItem("spikect-token"),
    info: null,
    studies: [],
    currentId: null,
    detail: null,
    view: "axial",
    window: "lung",
    showLung: true,
    showInf: true,
    lungOpacity: 0.35,
    infOpacity: 0.7,
    webgl2: hasWebGL2(),
    nv: null,
    loadedId: null,
    loading: null,
    display: false, // the CT is a display image (PNG/JPEG): already windowed
    pos: { axial: 0, coronal: 0, sagittal: 0 }, // slider value per view
    max: { axial: 0, coronal: 0, sagittal: 0 },
    listTimer: null,
    studyTimer: null,
    fallbackUrl: null,
    fallbackSeq: 0,
    uploadedId: null,
    offline: false,
    modelBanner: "",
  };

  function hasWebGL2() {
    if (new URLSearchParams(location.search).get("renderer") === "png") return false; // forced fallback
    try {
      return !!document.createElement("canvas").getContext("webgl2");
    } catch {
      return false;
    }
  }

  // ------------------------------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  function authHeaders() {
    return state.token ? { Authorization: `Bearer ${state.token}` } : {};
  }

  async function api(path, options = {}) {
    const res = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
    if (res.status === 401) {
      await askToken(Boolean(state.token));
      return api(path, options);
    }
    if (!res.ok) {
      let detail = res.statusText;
      try {
        detail = (await res.json()).detail || detail;
      } catch {
        /* not JSON */
      }
      throw new ApiError(res.status, typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return res;
  }

  let tokenWaiters = null;
  function askToken(wasWrong) {
    if (tokenWaiters) return new Promise((resolve) => tokenWaiters.push(resolve));
    tokenWaiters = [];
    return new Promise((resolve) => {
      const dialog = $("token-dialog");
      $("token-error").hidden = !wasWrong;
      $("token-input").value = "";
      dialog.addEventListener(
        "close",
        () => {
          state.token = $("token-input").value.trim() || null;
          if (state.token) sessionStorage.setItem("spikect-token", state.token);
          const waiters = tokenWaiters;
          tokenWaiters = null;
          resolve();
          waiters.forEach((w) => w());
        },
        { once: true },
      );
      dialog.showModal();
    });
  }

  function tokenFromHash() {
    const m = location.hash.match(/token=([^&]+)/);
    if (m) {
      state.token = decodeURIComponent(m[1]);
      sessionStorage.setItem("spikect-token", state.token);
      history.replaceState(null, "", location.pathname + location.search); // keep it out of the history
    }
  }

  // ------------------------------------------------------------------------------------ formatting

  const nf = (digits) => new Intl.NumberFormat(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
  const fmtPct = (p) => `${nf(p >= 10 ? 1 : p > 0 && p < 0.1 ? 2 : 1).format(p)} %`;
  const fmtInt = (n) => new Intl.NumberFormat().format(n);

  function fmtDate(iso) {
    const d = new Date(iso);
    const today = new Date().toDateString() === d.toDateString();
    const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
    return today ? `today ${time}` : `${d.toLocaleDateString(undefined, { day: "numeric", month: "short", year: "numeric" })} ${time}`;
  }

  function fmtVolume(region, physical) {
    if (physical && region.lung_volume_ml !== null) {
      return {
        lung: `${fmtInt(Math.round(region.lung_volume_ml))} ml`,
        inf: `${nf(1).format(region.infection_volume_ml)} ml`,
      };
    }
    return { lung: `${fmtInt(region.lung_voxels)} px`, inf: `${fmtInt(region.infection_voxels)} px` };
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  // ------------------------------------------------------------------------------------ study list

  async function refreshList() {
    clearTimeout(state.listTimer);
    try {
      state.studies = await (await api("/api/studies")).json();
      renderList();
      if (state.offline) showBanner(state.modelBanner || ""); // the server is back
      state.offline = false;
    } catch (err) {
      state.offline = true;
      showBanner(`Cannot reach the server: ${err.message}`);
    }
    const busy = state.studies.some((s) => s.status === "queued" || s.status === "running");
    state.listTimer = setTimeout(refreshList, busy ? 1500 : 15000);
  }

  function studyResult(s) {
    if (s.status === "done") {
      return `${s.label} · ${s.severity} · ${fmtPct(s.infection_percent)}`;
    }
    if (s.status === "running") return `running · ${Math.round(100 * s.progress)} %`;
    if (s.status === "queued") return s.queue_position ? `queued · #${s.queue_position}` : "queued";
    return "failed";
  }

  function renderList() {
    const list = $("study-list");
    const focusedId = document.activeElement?.closest?.("li[data-id]")?.dataset.id;
    const focusedDelete = document.activeElement?.classList?.contains("del");
    list.replaceChildren();
    for (const s of state.studies) {
      const current = s.id === state.currentId;
      const open = el(
        "button",
        { type: "button", class: "open", "aria-current": current ? "true" : null, onclick: () => openStudy(s.id) },
        el("span", { class: "sname", text: s.name }),
        el("span", { class: "sdate", text: fmtDate(s.created) }),
        el("span", { class: `sresult ${s.status} ${s.label || ""}`, text: studyResult(s) }),
      );
      if (s.status === "failed" && s.error) open.title = s.error;
      const del = el(
        "button",
        { type: "button", class: "del icon-btn", "aria-label": `Delete study ${s.name}`, title: "Delete", onclick: () => deleteStudy(s) },
        "×",
      );
      list.append(el("li", { "data-id": s.id, class: current ? "current" : "" }, open, del));
    }
    $("no-studies").hidden = state.studies.length > 0;
    $("study-count").textContent = state.studies.length ? String(state.studies.length) : "";
    if (focusedId) list.querySelector(`li[data-id="${focusedId}"] ${focusedDelete ? ".del" : ".open"}`)?.focus();
  }

  async function deleteStudy(s) {
    if (!confirm(`Delete the study "${s.name}" and its files?`)) return;
    try {
      await api(`/api/studies/${s.id}`, { method: "DELETE" });
    } catch (err) {
      if (err.status !== 404) return showBanner(`Could not delete: ${err.message}`);
    }
    if (s.id === state.currentId) closeStudy();
    await refreshList();
  }

  function stepStudy(delta) {
    if (!state.studies.length) return;
    const i = state.studies.findIndex((s) => s.id === state.currentId);
    const next = state.studies[Math.max(0, Math.min(state.studies.length - 1, i < 0 ? 0 : i + delta))];
    openStudy(next.id);
    document.querySelector(`li[data-id="${next.id}"] .open`)?.scrollIntoView({ block: "nearest" });
  }

  // ---------------------------------------------------------------------------------------- upload

  function upload(fileList) {
    const files = [...fileList].filter((f) => !f.name.startsWith(".") && f.name !== "Thumbs.db");
    const status = $("upload-status");
    if (!files.length) return;
    const total = files.reduce((n, f) => n + f.size, 0);
    if (state.info && total > state.info.max_upload_bytes) {
      status.className = "upload-status error";
      status.textContent = `Too large: ${(total / 2 ** 20).toFixed(0)} MB; this server accepts up to ${(state.info.max_upload_bytes / 2 ** 20).toFixed(0)} MB.`;
      return;
    }
    const form = new FormData();
    for (const f of files) form.append("files", f, f.webkitRelativePath || f.name);
    const what = files.length === 1 ? files[0].name : `${files.length} files`;
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/studies");
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    status.className = "upload-status";
    status.replaceChildren(el("span", { text: `Uploading ${what}…` }), el("div", { class: "bar thin" }, el("div", { id: "upload-fill" })));
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) $("upload-fill").style.width = `${(100 * e.loaded) / e.total}%`;
    };
    xhr.onload = async () => {
      let body = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        /* empty */
      }
      if (xhr.status === 401) {
        status.textContent = "";
        await askToken(Boolean(state.token));
        return upload(files);
      }
      if (xhr.status !== 202) {
        status.className = "upload-status error";
        status.textContent = `Not accepted (${xhr.status}): ${body.detail || xhr.statusText}`;
        return;
      }
      status.className = "upload-status ok";
      status.textContent = `${what}: uploaded, diagnosing…`;
      state.uploadedId = body.id;
      await refreshList();
      openStudy(body.id);
    };
    xhr.onerror = () => {
      status.className = "upload-status error";
      status.textContent = "The upload failed: the connection was lost (is the server running?).";
    };
    xhr.send(form);
  }

  // ---------------------------------------------------------------------------------------- studies

  async function openStudy(id) {
    clearTimeout(state.studyTimer);
    if (id !== state.currentId) {
      state.currentId = id;
      history.replaceState(null, "", `#study=${id}`);
      renderList();
    }
    let d;
    try {
      d = await (await api(`/api/studies/${id}`)).json();
    } catch (err) {
      if (err.status === 404) closeStudy();
      else showBanner(`Cannot load the study: ${err.message}`);
      return;
    }
    if (id !== state.currentId) return; // another study was opened meanwhile
    const listed = state.studies.find((s) => s.id === id);
    if (listed && (listed.status !== d.status || listed.progress !== d.progress)) {
      Object.assign(listed, { status: d.status, progress: d.progress, stage: d.stage, queue_position: d.queue_position });
      Object.assign(listed, { label: d.label, severity: d.severity, infection_percent: d.infection_percent, error: d.error });
      renderList(); // the list and the stage show the same progress
    }
    if (id === state.uploadedId && (d.status === "done" || d.status === "failed")) {
      state.uploadedId = null;
      $("upload-status").textContent = ""; // the result is on screen now
    }
    state.detail = d;
    renderStudy(d);
    if (d.status === "queued" || d.status === "running") {
      state.studyTimer = setTimeout(() => openStudy(id), 800);
    }
  }

  function closeStudy() {
    clearTimeout(state.studyTimer);
    state.currentId = null;
    state.detail = null;
    history.replaceState(null, "", location.pathname + location.search);
    showStage("empty");
    $("results-empty").hidden = false;
    $("results-body").hidden = true;
    renderList();
  }

  function showStage(which) {
    $("stage-empty").hidden = which !== "empty";
    $("stage-progress").hidden = which !== "progress";
    $("stage-failed").hidden = which !== "failed";
    const viewing = which === "viewer";
    $("gl").hidden = !(viewing && state.webgl2);
    $("fallback").hidden = !(viewing && !state.webgl2);
    $("renderer-note").hidden = !(viewing && !state.webgl2);
    $("slice").disabled = !viewing;
    $("slice-prev").disabled = !viewing;
    $("slice-next").disabled = !viewing;
    if (!viewing) $("slice-label").textContent = "–";
  }

  function renderStudy(d) {
    if (d.status === "queued" || d.status === "running") {
      showStage("progress");
      const pct = Math.round(100 * d.progress);
      $("progress-title").textContent = d.status === "queued" ? "Waiting in the queue…" : `Diagnosing… ${pct} %`;
      $("progress-fill").style.width = `${d.status === "queued" ? 0 : pct}%`;
      $("progress-bar").setAttribute("aria-valuenow", String(pct));
      $("progress-stage").textContent =
        d.status === "queued" ? (d.queue_position ? `${d.queue_position} in line` : "") : d.stage;
      $("results-empty").hidden = false;
      $("results-body").hidden = true;
      return;
    }
    if (d.status === "failed") {
      showStage("failed");
      $("failed-reason").textContent = d.error || "unknown error";
      $("results-empty").hidden = false;
      $("results-body").hidden = true;
      return;
    }
    renderResults(d);
    showStage("viewer");
    if (state.loadedId !== d.id) loadViewer(d);
  }

  // ---------------------------------------------------------------------------------------- results

  function renderResults(d) {
    const r = d.report;
    const c = r.classification;
    const physical = r.spacing_physical;
    $("results-empty").hidden = true;
    $("results-body").hidden = false;
    $("study-title").textContent = d.name;
    const dims = r.input_format === "image" ? `${r.shape_zyx[2]}×${r.shape_zyx[1]} px` : `${r.n_slices} slices`;
    $("study-meta").textContent = `${fmtDate(d.created)} · ${FORMATS[r.input_format] || r.input_format} · ${dims} · ${nf(1).format(r.runtime_s)} s`;

    const positive = c.label === "positive";
    const label = $("class-label");
    label.className = `class-label ${c.label}`;
    label.replaceChildren(
      el("span", { text: `COVID-19 ${c.label}` }),
      el("span", { class: "prob", text: `p = ${nf(2).format(c.probability)}` }),
    );
    $("prob-fill").style.width = `${100 * c.probability}%`;
    $("prob-fill").className = `pfill ${c.label}`;
    const lungSlices = c.lung_slices || r.n_slices;
    let detail = r.n_slices > 1
      ? `Mean of the ${c.top_k} most suspicious of ${lungSlices} lung slices; ${c.positive_slices} above 0.5.`
      : "Probability of the slice from the classifier; positive above 0.5.";
    const disagree = (positive && r.severity === "CT-0") || (c.label === "negative" && r.infection_percent > 0);
    if (c.label === "indeterminate") {
      detail += " The classifier gave no evidence on these slices (silent output): read the infection map.";
    } else if (disagree) {
      detail += " The classifier and the infection map disagree: review the slices.";
    }
    $("class-detail").textContent = detail;

    const vol = fmtVolume(r, physical);
    $("inf-value").textContent = fmtPct(r.infection_percent);
    $("inf-detail").textContent = `${vol.inf} of ${vol.lung} lung`;
    $("sev-value").textContent = r.severity;
    $("sev-value").className = `kpi-value sev-${r.severity}`;
    $("sev-detail").textContent = r.severity_description;

    const grades = state.info?.severity_scale || [];
    $("scale").replaceChildren(
      ...grades.map((g, i) => {
        const current = g.code === r.severity;
        return el(
          "li",
          { class: `sev-${g.code}${current ? " current" : ""}`, "aria-current": current ? "true" : null, title: g.description },
          el("span", { class: "code", text: g.code }),
          el("span", { class: "range", text: gradeRange(grades, i) }),
        );
      }),
    );

    const rows = [
      ["Lung", (x) => fmtVolume(x, physical).lung],
      ["Infection", (x) => fmtVolume(x, physical).inf],
      ["Infected", (x) => fmtPct(x.infection_percent)],
    ];
    $("lr-body").replaceChildren(
      ...rows.map(([name, f]) =>
        el("tr", {}, el("th", { scope: "row", text: name }), el("td", { text: f(r.right_lung) }), el("td", { text: f(r.left_lung) }), el("td", { text: f(r) }))),
    );

    renderDownloads(d);
    const warnings = r.warnings || [];
    $("warnings-box").hidden = warnings.length === 0;
    $("warnings-count").textContent = String(warnings.length);
    $("warnings").replaceChildren(...warnings.map((w) => el("li", { text: w })));
    drawProfile();
  }

  function renderDownloads(d) {
    const base = d.name.replace(/\.(nii\.gz|nii|dcm|png|jpe?g|zip)$/i, "").replace(/[^A-Za-z0-9._-]+/g, "_") || "study";
    const order = ["lung.nii.gz", "infection.nii.gz", "lung.png", "infection.png", "overlay.png", "report.json", "ct.nii.gz"];
    const links = order.filter((f) => d.files.includes(f)).map((f) => {
      const a = el("a", { class: "dl", href: `/api/studies/${d.id}/files/${f}`, download: `${base}_${f}` }, FILE_LABELS[f]);
      a.addEventListener("click", async (e) => {
        if (!state.token) return; // a plain link works without a token
        e.preventDefault();
        const blob = await (await api(a.getAttribute("href"))).blob();
        const url = URL.createObjectURL(blob);
        const tmp = el("a", { href: url, download: a.download });
        document.body.append(tmp);
        tmp.click();
        tmp.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
      });
      return a;
    });
    $("downloads").replaceChildren(...links);
  }

  // per-slice profile: probability (0..1, left axis) and infection % (right axis) against slice index
  function drawProfile() {
    const d = state.detail;
    const plot = $("profile");
    if (!d || d.status !== "done") return;
    const slices = d.report.slices;
    const n = slices.length;
    plot.replaceChildren();
    const W = Math.max(240, $("profile-wrap").clientWidth || 300);
    const H = 140;
    const m = { l: 30, r: 38, t: 6, b: 22 };
    const w = W - m.l - m.r;
    const h = H - m.t - m.b;
    plot.setAttribute("viewBox", `0 0 ${W} ${H}`);
    plot.setAttribute("width", W);
    plot.setAttribute("height", H);
    const infMax = niceMax(Math.max(...slices.map((s) => s.infection_percent)));
    const x = (i) => m.l + (n > 1 ? (i / (n - 1)) * w : w / 2);
    const yP = (p) => m.t + (1 - p) * h;
    const yI = (q) => m.t + (1 - q / infMax) * h;
    plot.append(svg("rect", { x: m.l, y: m.t, width: w, height: h, class: "frame" }));
    for (const p of [0, 0.5, 1]) {
      plot.append(svg("line", { x1: m.l, x2: m.l + w, y1: yP(p), y2: yP(p), class: p === 0.5 ? "threshold" : "grid" }));
      const t = svg("text", { x: m.l - 5, y: yP(p) + 3.5, class: "tick prob", "text-anchor": "end" });
      t.textContent = String(p);
      plot.append(t);
    }
    for (const q of [0, infMax / 2, infMax]) {
      const t = svg("text", { x: m.l + w + 5, y: yI(q) + 3.5, class: "tick inf" });
      t.textContent = `${+q.toFixed(1)}%`;
      plot.append(t);
    }
    for (const [label, anchor, px] of [["inferior", "start", m.l], ["superior", "end", m.l + w]]) {
      const t = svg("text", { x: px, y: H - 6, class: "tick", "text-anchor": anchor });
      t.textContent = n > 1 ? `${label} · ${anchor === "start" ? 1 : n}` : "";
      plot.append(t);
    }
    const line = (f, key) => slices.map((s, i) => `${x(i).toFixed(1)},${f(s[key]).toFixed(1)}`).join(" ");
    if (n > 1) {
      plot.append(svg("polygon", { points: `${m.l},${yI(0)} ${line(yI, "infection_percent")} ${m.l + w},${yI(0)}`, class: "inf-area" }));
      plot.append(svg("polyline", { points: line(yI, "infection_percent"), class: "inf-line" }));
      plot.append(svg("polyline", { points: line(yP, "probability"), class: "prob-line" }));
    } else {
      plot.append(svg("circle", { cx: x(0), cy: yI(slices[0].infection_percent), r: 4, class: "inf-dot" }));
      plot.append(svg("circle", { cx: x(0), cy: yP(slices[0].probability), r: 4, class: "prob-dot" }));
    }
    const marker = svg("line", { id: "profile-marker", y1: m.t, y2: m.t + h, class: "marker" });
    plot.append(marker);
    plot._geom = { n, m, w };
    plot.setAttribute("aria-label", `Per-slice COVID probability and infection percentage over ${n} slice${n > 1 ? "s" : ""}`);
    updateProfileMarker();
  }

  function gradeRange(grades, i) {
    const g = grades[i];
    const next = grades[i + 1];
    if (!next) return `>${g.lower_percent} %`;
    if (g.inclusive && next.lower_percent === g.lower_percent) return "none";
    return g.lower_percent === 0 ? `<${next.lower_percent} %` : `${g.lower_percent}–${next.lower_percent} %`;
  }

  function niceMax(v) {
    for (const s of [1, 2, 5, 10, 20, 25, 50, 100]) if (v <= s) return s;
    return 100;
  }

  function updateProfileMarker() {
    const plot = $("profile");
    const g = plot._geom;
    const d = state.detail;
    if (!g || !d || d.status !== "done") return;
    const z = Math.max(0, Math.min(g.n - 1, axialIndex()));
    const px = g.m.l + (g.n > 1 ? (z / (g.n - 1)) * g.w : g.w / 2);
    const marker = $("profile-marker");
    marker.setAttribute("x1", px);
    marker.setAttribute("x2", px);
    const s = d.report.slices[z];
    $("profile-readout").textContent = `Slice ${z + 1}: probability ${nf(2).format(s.probability)} · infection ${fmtPct(s.infection_percent)}`;
  }

  function profileIndexAt(clientX) {
    const plot = $("profile");
    const g = plot._geom;
    const box = plot.getBoundingClientRect();
    const scale = box.width / plot.viewBox.baseVal.width;
    const fx = ((clientX - box.left) / scale - g.m.l) / g.w;
    return Math.max(0, Math.min(g.n - 1, Math.round(fx * (g.n - 1))));
  }

  function jumpToAxial(z) {
    if (state.view === "coronal" || state.view === "sagittal") setView("axial");
    setSlice("axial", z);
  }

  // ---------------------------------------------------------------------------------------- viewer

  function axialIndex() {
    return state.pos.axial; // axial slider value = canonical z in both renderers
  }

  function sliderView() {
    return state.view === "multi" ? "axial" : state.view;
  }

  async function ensureNiivue() {
    if (state.nv) return state.nv;
    const nv = new niivue.Niivue({
      backColor: [0.02, 0.027, 0.04, 1],
      crosshairColor: [1, 0.8, 0.25, 0.7],
      crosshairWidth: 0, // shown in the "All" view only (setView), where it links the three planes
      crosshairWidthUnit: "percent",
      show3Dcrosshair: false,
      isColorbar: false,
      isRadiologicalConvention: true, // patient's right on the viewer's left, as CT is read
      dragAndDropEnabled: false,
      multiplanarShowRender: niivue.SHOW_RENDER.NEVER,
      isOrientationTextVisible: true,
      loadingText: "",
      logLevel: "warn",
    });
    await nv.attachToCanvas($("gl"));
    nv.addColormap("spikect-lung", { R: [0, 0], G: [216, 216], B: [255, 255], A: [0, 255], I: [0, 255] });
    nv.addColormap("spikect-infection", { R: [255, 255], G: [42, 42], B: [42, 42], A: [0, 255], I: [0, 255] });
    nv.onLocationChange = () => syncFromViewer();
    state.nv = nv;
    return nv;
  }

  async function loadViewer(d) {
    state.loadedId = d.id;
    state.display = d.report.input_kind === "display";
    updateWindowButtons();
    const [nz, ny, nx] = d.report.shape_zyx;
    const best = d.start_slice ?? Math.floor(nz / 2); // the most infected slice
    if (!state.webgl2) {
      state.max = { axial: nz - 1, coronal: ny - 1, sagittal: nx - 1 };
      state.pos = { axial: best, coronal: Math.floor(ny / 2), sagittal: Math.floor(nx / 2) };
      $("gl").hidden = true;
      updateSlider();
      return renderFallback();
    }
    const nv = await ensureNiivue();
    const url = (f) => `/api/studies/${d.id}/files/${f}`;
    const headers = authHeaders();
    const volumes = [{ url: url("ct.nii.gz"), name: "ct.nii.gz", headers }];
    for (const [f, cmap, opacity] of [["lung.nii.gz", "spikect-lung", state.lungOpacity], ["infection.nii.gz", "spikect-infection", state.infOpacity]]) {
      if (d.files.includes(f)) volumes.push({ url: url(f), name: f, headers, colormap: cmap, opacity, cal_min: 0, cal_max: 1 });
    }
    const loading = nv.loadVolumes(volumes);
    state.loading = loading;
    try {
      await loading;
    } catch (err) {
      showBanner(`The viewer could not load the scan: ${err.message || err}`);
      return;
    }
    if (state.loading !== loading || state.loadedId !== d.id) return; // superseded
    const dims = nv.volumes[0].dimsRAS; // [3, nx, ny, nz] in RAS voxel order
    state.max = { sagittal: dims[1] - 1, coronal: dims[2] - 1, axial: dims[3] - 1 };
    applyWindow();
    applyOverlays();
    setView(state.view);
    setSlice("axial", best);
    $("gl").setAttribute("data-loaded", d.id); // tests wait for this
  }

  function syncFromViewer() {
    const nv = state.nv;
    if (!nv || !nv.volumes.length) return;
    const vox = nv.frac2vox(nv.scene.crosshairPos);
    state.pos = { sagittal: Math.round(vox[0]), coronal: Math.round(vox[1]), axial: Math.round(vox[2]) };
    updateSlider();
    updateProfileMarker();
  }

  function setSlice(view, value) {
    value = Math.max(0, Math.min(state.max[view], Math.round(value)));
    if (state.webgl2 && state.nv && state.nv.volumes.length) {
      const nv = state.nv;
      const vox = nv.frac2vox(nv.scene.crosshairPos);
      const delta = [0, 0, 0];
      delta[AXIS[view]] = value - Math.round(vox[AXIS[view]]);
      if (delta.some((v) => v !== 0)) nv.moveCrosshairInVox(delta[0], delta[1], delta[2]);
      else syncFromViewer();
      return;
    }
    state.pos[view] = value;
    updateSlider();
    updateProfileMarker();
    renderFallback();
  }

  function stepSlice(delta) {
    const view = sliderView();
    setSlice(view, state.pos[view] + delta);
  }

  function updateSlider() {
    const view = sliderView();
    const slider = $("slice");
    slider.max = String(state.max[view]);
    slider.value = String(state.pos[view]);
    const n = state.max[view] + 1;
    $("slice-name").textContent = `${VIEW_NAMES[state.view]} slice`;
    $("slice-label").textContent = `${state.pos[view] + 1} / ${n}`;
    slider.setAttribute("aria-valuetext", `${VIEW_NAMES[state.view]} slice ${state.pos[view] + 1} of ${n}`);
    const single = n <= 1;
    slider.disabled = single || state.loadedId === null;
    $("slice-prev").disabled = slider.disabled;
    $("slice-next").disabled = slider.disabled;
  }

  function setView(view) {
    if (!state.webgl2 && view === "multi") return;
    state.view = view;
    for (const b of document.querySelectorAll("[data-view]")) b.setAttribute("aria-pressed", String(b.dataset.view === view));
    if (state.webgl2 && state.nv) {
      const T = niivue.SLICE_TYPE;
      state.nv.setCrosshairWidth(view === "multi" ? 0.35 : 0);
      state.nv.setSliceType({ axial: T.AXIAL, coronal: T.CORONAL, sagittal: T.SAGITTAL, multi: T.MULTIPLANAR }[view]);
    }
    updateSlider();
    if (!state.webgl2 && state.loadedId) renderFallback();
  }

  function setWindow(name) {
    if (state.display) return;
    state.window = name;
    updateWindowButtons();
    applyWindow();
    if (!state.webgl2 && state.loadedId) renderFallback();
  }

  function updateWindowButtons() {
    for (const b of document.querySelectorAll("[data-window]")) {
      b.setAttribute("aria-pressed", String(!state.display && b.dataset.window === state.window));
      b.disabled = state.display;
      b.dataset.title ??= b.title;
      b.title = state.display ? "A display image (PNG/JPEG) is already windowed" : b.dataset.title;
    }
  }

  function applyWindow() {
    const nv = state.nv;
    if (!state.webgl2 || !nv || !nv.volumes.length) return;
    const [lo, hi] = state.display ? [0, 255] : WINDOWS[state.window];
    nv.volumes[0].cal_min = lo;
    nv.volumes[0].cal_max = hi;
    nv.updateGLVolume();
  }

  function applyOverlays() {
    const nv = state.nv;
    if (!state.webgl2) {
      if (state.loadedId) renderFallback();
      return;
    }
    if (!nv || nv.volumes.length < 3) return;
    nv.setOpacity(1, state.showLung ? state.lungOpacity : 0);
    nv.setOpacity(2, state.showInf ? state.infOpacity : 0);
  }

  let fallbackTimer = null;
  function renderFallback() {
    clearTimeout(fallbackTimer);
    fallbackTimer = setTimeout(async () => {
      const d = state.detail;
      if (!d || d.status !== "done") return;
      const view = sliderView();
      const seq = ++state.fallbackSeq;
      const q = new URLSearchParams({ view, window: state.window, lung: state.showLung, infection: state.showInf });
      try {
        const blob = await (await api(`/api/studies/${d.id}/slices/${state.pos[view]}.png?${q}`)).blob();
        if (seq !== state.fallbackSeq) return;
        if (state.fallbackUrl) URL.revokeObjectURL(state.fallbackUrl);
        state.fallbackUrl = URL.createObjectURL(blob);
        const img = $("fallback");
        img.src = state.fallbackUrl;
        img.alt = `${VIEW_NAMES[state.view]} slice ${state.pos[view] + 1} with lung and infection outlines`;
        img.setAttribute("data-loaded", d.id);
      } catch (err) {
        showBanner(`Cannot render the slice: ${err.message}`);
      }
    }, 40);
  }

  // -------------------------------------------------------------------------------------- wiring

  function showBanner(text) {
    const b = $("banner");
    b.textContent = text;
    b.hidden = !text;
  }

  function bindControls() {
    const drop = $("drop");
    const fileInput = $("file-input");
    drop.addEventListener("click", () => fileInput.click());
    drop.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        fileInput.click();
      }
    });
    for (const ev of ["dragenter", "dragover"]) {
      drop.addEventListener(ev, (e) => {
        e.preventDefault();
        drop.classList.add("over");
      });
    }
    for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      upload(e.dataTransfer.files);
    });
    fileInput.addEventListener("change", () => {
      upload(fileInput.files);
      fileInput.value = "";
    });
    $("folder-btn").addEventListener("click", () => $("folder-input").click());
    $("folder-input").addEventListener("change", () => {
      upload($("folder-input").files);
      $("folder-input").value = "";
    });

    for (const b of document.querySelectorAll("[data-view]")) b.addEventListener("click", () => setView(b.dataset.view));
    for (const b of document.querySelectorAll("[data-window]")) b.addEventListener("click", () => setWindow(b.dataset.window));
    $("show-lung").addEventListener("change", (e) => {
      state.showLung = e.target.checked;
      applyOverlays();
    });
    $("show-infection").addEventListener("change", (e) => {
      state.showInf = e.target.checked;
      applyOverlays();
    });
    $("lung-opacity").addEventListener("input", (e) => {
      state.lungOpacity = e.target.value / 100;
      applyOverlays();
    });
    $("infection-opacity").addEventListener("input", (e) => {
      state.infOpacity = e.target.value / 100;
      applyOverlays();
    });
    $("slice").addEventListener("input", (e) => setSlice(sliderView(), Number(e.target.value)));
    $("slice-prev").addEventListener("click", () => stepSlice(-1));
    $("slice-next").addEventListener("click", () => stepSlice(1));

    const plot = $("profile");
    plot.addEventListener("click", (e) => plot._geom && jumpToAxial(profileIndexAt(e.clientX)));
    plot.addEventListener("keydown", (e) => {
      const g = plot._geom;
      if (!g) return;
      const step = { ArrowLeft: -1, ArrowRight: 1, ArrowDown: -1, ArrowUp: 1, PageDown: -10, PageUp: 10 }[e.key];
      if (step !== undefined) jumpToAxial(axialIndex() + step);
      else if (e.key === "Home") jumpToAxial(0);
      else if (e.key === "End") jumpToAxial(g.n - 1);
      else return;
      e.preventDefault();
      e.stopPropagation();
    });
    let resizeTimer = null;
    new ResizeObserver(() => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(drawProfile, 100);
    }).observe($("profile-wrap"));

    $("help-btn").addEventListener("click", () => $("help").showModal());
    document.addEventListener("keydown", onKey);
  }

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || document.querySelector("dialog[open]")) return;
    const t = e.target;
    if (t.closest && t.closest("textarea, select, [contenteditable]")) return;
    if (t.tagName === "INPUT" && !["checkbox", "button"].includes(t.type)) return; // sliders keep their arrows
    const actions = {
      ArrowUp: () => stepSlice(1),
      ArrowDown: () => stepSlice(-1),
      PageUp: () => stepSlice(10),
      PageDown: () => stepSlice(-10),
      1: () => setView("axial"),
      2: () => setView("coronal"),
      3: () => setView("sagittal"),
      4: () => setView("multi"),
      l: () => setWindow("lung"),
      m: () => setWindow("mediastinal"),
      o: () => $("show-lung").click(),
      i: () => $("show-infection").click(),
      j: () => stepStudy(1),
      k: () => stepStudy(-1),
      u: () => $("file-input").click(),
      "?": () => $("help").showModal(),
    };
    const action = actions[e.key.length === 1 ? e.key.toLowerCase() : e.key];
    if (!action) return;
    e.preventDefault();
    action();
  }

  async function init() {
    tokenFromHash();
    bindControls();
    if (!state.webgl2) {
      const multi = document.querySelector("[data-view=multi]");
      multi.disabled = true;
      multi.title = "Needs WebGL2";
    }
    showStage("empty");
    try {
      state.info = await (await api("/api/info")).json();
    } catch (err) {
      showBanner(`Cannot reach the server: ${err.message}`);
      return;
    }
    const info = state.info;
    $("model-info").textContent = `model: ${info.weights} · v${info.version}`;
    if (!info.model_ready) {
      const problem = info.model_problem.replace(/\.?$/, ".");
      state.modelBanner = `No model to run: ${problem} New uploads are refused until weights are available.`;
      showBanner(state.modelBanner);
    }
    await refreshList();
    const wanted = location.hash.match(/study=([0-9a-f]{16})/);
    const first = wanted ? wanted[1] : state.studies.find((s) => s.status === "done")?.id;
    if (first) openStudy(first);
  }

  document.addEventListener("DOMContentLoaded", init);
})();
