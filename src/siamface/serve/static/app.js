// The siamface page: a thin client of the REST service. Everything the model does (finding,
// aligning and embedding faces, deciding) happens on the server; this file picks photos,
// sends them, and shows the answers -- in English or Japanese.
"use strict";

(() => {
  const TEXTS = window.SIAMFACE_TEXTS;
  const LANGS = { en: "English", ja: "日本語" };
  const state = {
    lang: "en",
    health: null,
    card: null,
    files: {},
    picks: {}, // slot -> index of the face the person clicked (several faces in a photo)
    detections: {}, // slot -> faces found in its photo (from the last answer or refusal)
    errors: {}, // panel id -> last error (re-rendered on language switch)
    verify: null,
    identify: null,
    people: null,
    status: null, // last gallery status message {key, params}
    watch: null, // last /watch/events answer
    watchMissing: false,
  };

  // -- small helpers ----------------------------------------------------------------------
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  function storage(kind) {
    try {
      return kind === "session" ? window.sessionStorage : window.localStorage;
    } catch {
      return null;
    }
  }

  function pickLang() {
    const saved = storage("local")?.getItem("siamface.lang");
    if (saved && TEXTS[saved]) return saved;
    for (const l of navigator.languages || [navigator.language || "en"]) {
      const code = String(l).toLowerCase();
      if (code.startsWith("ja")) return "ja";
      if (code.startsWith("en")) return "en";
    }
    return "en";
  }

  function t(key, params = {}) {
    const text = TEXTS[state.lang][key] ?? TEXTS.en[key] ?? key;
    return text.replace(/\{(\w+)\}/g, (m, k) => (k in params ? String(params[k]) : m));
  }

  function capital(s) {
    return state.lang === "en" && s ? s[0].toUpperCase() + s.slice(1) : s;
  }

  const locale = () => (state.lang === "ja" ? "ja-JP" : "en-US");
  const num = (x, d = 3) => (typeof x === "number" && isFinite(x) ? x.toFixed(d) : "–");
  const pct = (x) => (typeof x === "number" && isFinite(x) ? `${(100 * x).toFixed(1)}%` : "–");
  const int = (x) => (typeof x === "number" ? x.toLocaleString(locale()) : String(x));

  function farText(far) {
    if (typeof far !== "number" || !isFinite(far)) return "–";
    if (far <= 0) return "0";
    const n = 1 / far;
    if (n < 1.5) return pct(far);
    const rounded = n >= 100 ? Math.round(n / 10) * 10 : Math.round(n);
    return t("far_ratio", { n: int(rounded) });
  }

  // -- the REST service -------------------------------------------------------------------
  async function api(path, { method = "GET", body = null, key = null } = {}) {
    let response;
    try {
      response = await fetch(path, {
        method,
        body,
        headers: key ? { "X-API-Key": key } : {},
      });
    } catch (e) {
      throw { code: "network", reason: e.message || String(e) };
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      throw Object.assign(
        { status: response.status, code: `http_${response.status}`, detail: response.statusText },
        data || {},
      );
    }
    return data;
  }

  function where(field) {
    if (!field) return t("where_file");
    const m = /^images\[(\d+)\]$/.exec(field);
    if (m) return t("where_images", { n: Number(m[1]) + 1 });
    const key = `where_${field}`;
    return TEXTS.en[key] ? t(key) : t("where_file");
  }

  function errorText(err) {
    const limits = state.health?.limits || {};
    const p = { where: where(err.field), name: err.name ?? "", detail: err.detail ?? "" };
    const byCode = {
      bad_image: () => t("err_bad_image", p),
      no_face: () => t("err_no_face", p),
      ambiguous_face: () => t("err_ambiguous_face", p),
      too_large: () => t("err_too_large", { mb: limits.max_upload_mb ?? "?" }),
      file_too_large: () => t("err_file_too_large", { ...p, mb: limits.max_upload_mb ?? "?" }),
      image_too_large: () =>
        t("err_image_too_large", { ...p, mp: limits.max_pixels ? limits.max_pixels / 1e6 : "?" }),
      busy: () => t("err_busy"),
      missing_api_key: () => t("err_missing_api_key"),
      wrong_api_key: () => t("err_wrong_api_key"),
      writes_disabled: () => t("err_writes_disabled"),
      no_gallery: () => t("err_no_gallery"),
      not_enrolled: () => t("err_not_enrolled", p),
      already_enrolled: () => t("err_already_enrolled", p),
      need_photo: () => t("err_need_photo", p),
      need_photos: () => t("err_need_photos"),
      need_name: () => t("err_need_name"),
      network: () => t("err_network", { reason: err.reason }),
      internal_error: () => t("err_internal"),
      camera: () => t("err_camera", { reason: err.reason }),
    };
    return capital((byCode[err.code] || (() => t("err_other", p)))());
  }

  function showError(id, err) {
    state.errors[id] = err;
    const box = document.getElementById(id);
    if (!err) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    box.textContent = errorText(err);
    box.dataset.code = err.code || "";
    box.hidden = false;
  }

  // -- photo slots (file picker, drag-and-drop, camera) ------------------------------------
  function slotTitle(name) {
    return t(`slot_${name}`);
  }

  function buildSlot(slot) {
    const name = slot.dataset.slot;
    const multiple = slot.dataset.multiple === "true";
    slot.append($("#slot-template").content.cloneNode(true));
    const drop = $(".drop", slot);
    const input = $(".file", slot);
    const cameraBox = $(".camera-box", slot);
    const video = $("video", slot);
    input.multiple = multiple;
    input.id = `file-${name}`;
    // a file the browser cannot show (not an image): no broken-image icon, the name says it
    $(".preview", slot).addEventListener("error", (e) => {
      e.target.hidden = true;
    });
    state.files[name] = [];
    let stream = null;

    const stopCamera = () => {
      if (stream) stream.getTracks().forEach((tr) => tr.stop());
      stream = null;
      cameraBox.hidden = true;
      drop.hidden = false;
    };

    $(".choose", slot).addEventListener("click", () => input.click());
    input.addEventListener("change", () => {
      setFiles(slot, Array.from(input.files), multiple);
      input.value = "";
    });
    for (const ev of ["dragenter", "dragover"]) {
      drop.addEventListener(ev, (e) => {
        e.preventDefault();
        drop.classList.add("over");
      });
    }
    for (const ev of ["dragleave", "drop"]) {
      drop.addEventListener(ev, () => drop.classList.remove("over"));
    }
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      const files = Array.from(e.dataTransfer?.files || []);
      if (files.length) setFiles(slot, multiple ? files : files.slice(0, 1), multiple);
    });

    const cameraButton = $(".camera", slot);
    if (!navigator.mediaDevices?.getUserMedia) cameraButton.hidden = true;
    cameraButton.addEventListener("click", async () => {
      const panel = slot.closest("[role=tabpanel]");
      try {
        stream = await navigator.mediaDevices.getUserMedia({
          video: { facingMode: "user", width: { ideal: 1280 } },
          audio: false,
        });
      } catch (e) {
        showError(errorBoxOf(panel), { code: "camera", reason: e.name || String(e) });
        return;
      }
      video.srcObject = stream;
      await video.play().catch(() => {});
      drop.hidden = true;
      cameraBox.hidden = false;
      $(".snap", slot).focus();
    });
    $(".cancel", slot).addEventListener("click", () => {
      stopCamera();
      cameraButton.focus();
    });
    $(".snap", slot).addEventListener("click", () => {
      const canvas = document.createElement("canvas");
      canvas.width = video.videoWidth || 640;
      canvas.height = video.videoHeight || 480;
      canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
      canvas.toBlob(
        (blob) => {
          stopCamera();
          if (!blob) return;
          const file = new File([blob], `${t("camera_photo")}.jpg`, { type: "image/jpeg" });
          const files = multiple ? [...state.files[name], file] : [file];
          setFiles(slot, files, multiple);
          $(".choose", slot).focus();
        },
        "image/jpeg",
        0.92,
      );
    });
    renderSlot(slot);
  }

  function errorBoxOf(panel) {
    return $(".error", panel).id;
  }

  // -- several faces in a photo: boxes over the preview, click one to use it ---------------
  // The server finds every face and says which it used (``detections``), or refuses a photo
  // with two equally likely faces (code ambiguous_face, with every face's box). The person
  // then sees the boxes on their own photo and clicks the face to use; the next request
  // sends its number (face1 / face2 / face).
  const PICK_FIELD = { image1: "face1", image2: "face2", image: "face" };
  const RERUN = { image1: () => runVerify(), image2: () => runVerify(), image: () => runIdentify() };

  function slotEl(name) {
    return document.querySelector(`[data-slot="${name}"]`);
  }

  function setDetection(name, det) {
    state.detections[name] = det || null;
    drawFaces(name);
  }

  function drawFaces(name) {
    const slot = slotEl(name);
    if (!slot) return;
    const layer = $(".face-boxes", slot);
    const note = $(".faces-note", slot);
    const img = $(".preview", slot);
    layer.textContent = "";
    const det = state.detections[name];
    const faces = (det?.faces || []).map((f, i) => ({ ...f, i })).filter((f) => !f.merge);
    if (!det || faces.length < 2 || img.hidden || !img.naturalWidth) {
      layer.hidden = true;
      note.hidden = true;
      return;
    }
    const sx = img.clientWidth / img.naturalWidth;
    const sy = img.clientHeight / img.naturalHeight;
    layer.style.left = `${img.offsetLeft}px`;
    layer.style.top = `${img.offsetTop}px`;
    layer.style.width = `${img.clientWidth}px`;
    layer.style.height = `${img.clientHeight}px`;
    for (const f of faces) {
      const [x0, y0, x1, y1] = f.box;
      const used = det.face_used === f.i;
      const button = h("button", {
        type: "button",
        class: `face-box${used ? " used" : ""}`,
        "data-face": String(f.i),
        "aria-pressed": String(used),
        "aria-label": t("use_face", { n: f.i + 1 }),
        title: t("use_face", { n: f.i + 1 }),
      });
      button.style.left = `${Math.max(0, x0 * sx)}px`;
      button.style.top = `${Math.max(0, y0 * sy)}px`;
      button.style.width = `${(x1 - x0) * sx}px`;
      button.style.height = `${(y1 - y0) * sy}px`;
      button.addEventListener("click", (e) => {
        e.stopPropagation();
        state.picks[name] = f.i;
        RERUN[name]?.();
      });
      layer.append(button);
    }
    layer.hidden = false;
    note.textContent = det.face_used === null || det.face_used === undefined
      ? t("faces_choose", { n: faces.length })
      : t("faces_note", { n: faces.length });
    note.hidden = false;
  }

  function appendPick(form, name) {
    if (state.picks[name] !== undefined && state.picks[name] !== null) {
      form.append(PICK_FIELD[name], String(state.picks[name]));
    }
  }

  function showDetections(result) {
    for (const d of result?.detections || []) setDetection(d.field, d);
  }

  function showRefusal(err) {
    if (err?.code === "ambiguous_face" && err.field && PICK_FIELD[err.field]) {
      setDetection(err.field, { faces: err.faces || [], face_used: null });
    }
  }

  function setFiles(slot, files, multiple) {
    const name = slot.dataset.slot;
    const old = state.files[name];
    delete state.picks[name];
    state.detections[name] = null;
    state.files[name] = multiple ? files : files.slice(0, 1);
    const img = $(".preview", slot);
    if (img.src) URL.revokeObjectURL(img.src);
    if (state.files[name].length) {
      img.src = URL.createObjectURL(state.files[name][0]);
      img.hidden = false;
      img.onload = () => drawFaces(name);
    } else {
      img.removeAttribute("src");
      img.hidden = true;
    }
    if (old !== state.files[name]) renderSlot(slot);
    drawFaces(name);
  }

  function renderSlot(slot) {
    const name = slot.dataset.slot;
    const multiple = slot.dataset.multiple === "true";
    const files = state.files[name] || [];
    $(".slot-title", slot).textContent = slotTitle(name);
    $(".slot-hint", slot).textContent = t(multiple ? "drop_hint_multi" : "drop_hint");
    $(".choose", slot).textContent = t(multiple ? "choose_files" : "choose_file");
    $(".file", slot).setAttribute("aria-label", slotTitle(name));
    $(".choose", slot).setAttribute("aria-label", `${slotTitle(name)}: ${$(".choose", slot).textContent}`);
    $(".preview", slot).alt = files.length ? `${slotTitle(name)}: ${files[0].name}` : "";
    $(".file-name", slot).textContent =
      files.length > 1 ? t("files_chosen", { n: files.length }) : files[0]?.name || "";
  }

  function checkSizes(files, fields) {
    const limit = state.health?.limits?.max_upload_mb;
    if (!limit) return null;
    for (let i = 0; i < files.length; i++) {
      if (files[i].size > limit * 2 ** 20) return { code: "file_too_large", field: fields[i] };
    }
    return null;
  }

  // -- verify ------------------------------------------------------------------------------
  async function runVerify() {
    const a = state.files.image1[0];
    const b = state.files.image2[0];
    showError("verify-error", null);
    if (!a || !b) {
      showError("verify-error", { code: "need_photo", field: a ? "image2" : "image1" });
      return;
    }
    const tooBig = checkSizes([a, b], ["image1", "image2"]);
    if (tooBig) {
      showError("verify-error", tooBig);
      return;
    }
    const form = new FormData();
    form.append("image1", a, a.name);
    form.append("image2", b, b.name);
    appendPick(form, "image1");
    appendPick(form, "image2");
    const button = $("#verify-run");
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      state.verify = await api("/verify?faces=true", { method: "POST", body: form });
      showDetections(state.verify);
      renderVerify(true);
    } catch (err) {
      state.verify = null;
      $("#verify-result").hidden = true;
      showRefusal(err);
      showError("verify-error", err);
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  function verdictText(same) {
    return same ? t("same") : t("different");
  }

  function setVerdict(el, same, text) {
    el.textContent = "";
    el.classList.toggle("same", same);
    el.classList.toggle("different", !same);
    el.dataset.same = String(same);
    el.append(h("span", { class: "icon", "aria-hidden": "true", text: same ? "✓" : "✕" }), text);
  }

  function renderVerify(fresh = false) {
    const r = state.verify;
    if (!r) return;
    const size = state.health?.model?.image_size ?? "";
    const [f1, f2] = r.faces || [];
    $("#verify-face1").src = f1 || "";
    $("#verify-face2").src = f2 || "";
    $("#verify-face1").alt = t("face_alt", { where: where("image1"), size });
    $("#verify-face2").alt = t("face_alt", { where: where("image2"), size });
    $("#verify-similarity").textContent = num(r.similarity);
    $("#verify-bar").style.width = `${Math.max(0, Math.min(1, r.similarity)) * 100}%`;
    const prob = $("#verify-probability");
    prob.hidden = typeof r.probability !== "number";
    if (!prob.hidden) prob.textContent = t("probability", { p: pct(r.probability) });
    setVerdict(
      $("#verify-verdict"),
      r.same,
      t("verdict_at", {
        verdict: verdictText(r.same),
        s: num(r.similarity),
        cmp: r.same ? "≥" : "<",
        t: num(r.threshold),
      }),
    );
    const record = state.card?.threshold;
    $("#verify-threshold-text").textContent =
      r.threshold_source === "given" && !(record && record.value === r.threshold)
        ? t("thr_given")
        : thresholdMeaning(record);
    const slider = $("#verify-slider");
    slider.min = Math.min(0, Math.floor(r.threshold * 10) / 10, Math.floor(r.similarity * 10) / 10);
    if (fresh) slider.value = r.threshold;
    $("#verify-result").hidden = false;
    renderSlider();
  }

  function renderSlider() {
    const r = state.verify;
    if (!r) return;
    const thr = Number($("#verify-slider").value);
    $("#verify-slider-value").textContent = num(thr);
    $("#verify-mark").style.left = `${Math.max(0, Math.min(1, thr)) * 100}%`;
    const same = r.similarity >= thr;
    setVerdict($("#verify-slider-verdict"), same, t("slider_verdict", { t: num(thr), verdict: verdictText(same) }));
    const rates = ratesAt(thr);
    $("#verify-slider-rates").textContent = rates
      ? t("slider_rates", { t: num(thr), tar: pct(rates.tar), far: farText(rates.far) })
      : "";
  }

  // The evaluation report tabulates TAR and FAR every 0.005 of cosine: the rates at the
  // chosen threshold are those of the nearest tabulated one. (Its compact ROC cannot be used
  // for this: it drops the points between its vertices.)
  function ratesAt(thr) {
    const table = state.card?.report?.rates;
    if (!table || !Array.isArray(table.threshold) || table.threshold.length === 0) return null;
    let best = 0;
    for (let i = 1; i < table.threshold.length; i++) {
      if (Math.abs(table.threshold[i] - thr) < Math.abs(table.threshold[best] - thr)) best = i;
    }
    return { th: table.threshold[best], far: table.far[best], tar: table.tar[best] };
  }

  function sourceText(source) {
    if (!source) return t("validation_identities");
    return source === "validation identities" ? t("validation_identities") : source;
  }

  function thresholdMeaning(rec) {
    if (!rec || typeof rec.value !== "number") return t("thr_none");
    let source = sourceText(rec.source);
    if (typeof rec.identities === "number" && typeof rec.images === "number") {
      source += t("thr_data", { ids: int(rec.identities), imgs: int(rec.images) });
    }
    let text;
    if (rec.method === "given") return t("thr_given");
    if ((rec.method === "far" || rec.method === undefined || rec.method === null) && rec.target_far) {
      text = t("thr_far", { far: farText(rec.target_far), source });
    } else if (String(rec.method || "").startsWith("eer")) {
      text = t("thr_eer", { source });
    } else if (rec.method === "best_accuracy") {
      text = t("thr_best", { source });
    } else if (!rec.method) {
      text = t("thr_source", { source: rec.source || "?" });
    } else {
      text = t("thr_other", { method: rec.method || "?", source });
    }
    if (typeof rec.tar === "number") {
      text += (state.lang === "ja" ? "" : " ") + t("thr_tar", { tar: pct(rec.tar) });
    }
    return text;
  }

  // -- identify ----------------------------------------------------------------------------
  async function runIdentify() {
    const file = state.files.image[0];
    showError("identify-error", null);
    if (!file) {
      showError("identify-error", { code: "need_photo", field: "image" });
      return;
    }
    const tooBig = checkSizes([file], ["image"]);
    if (tooBig) {
      showError("identify-error", tooBig);
      return;
    }
    const form = new FormData();
    form.append("image", file, file.name);
    appendPick(form, "image");
    const k = $("#identify-topk").value;
    const button = $("#identify-run");
    button.disabled = true;
    try {
      state.identify = await api(`/identify?faces=true&top_k=${encodeURIComponent(k)}`, {
        method: "POST",
        body: form,
      });
      showDetections(state.identify);
      renderIdentify();
    } catch (err) {
      state.identify = null;
      $("#identify-result").hidden = true;
      showRefusal(err);
      showError("identify-error", err);
    } finally {
      button.disabled = false;
    }
  }

  function thumb(url, name, stamp) {
    const initials = name
      .split(/\s+/)
      .map((w) => w[0] || "")
      .join("")
      .slice(0, 2)
      .toUpperCase();
    const fallback = h("span", { class: "thumb initials", "aria-hidden": "true", text: initials });
    const img = h("img", {
      class: "thumb",
      alt: "",
      width: 56,
      height: 56,
      src: stamp ? `${url}?v=${encodeURIComponent(stamp)}` : url,
    });
    img.addEventListener("error", () => img.replaceWith(fallback));
    return img;
  }

  function renderIdentify() {
    const r = state.identify;
    if (!r) return;
    const size = state.health?.model?.image_size ?? "";
    $("#identify-face").src = r.face || "";
    $("#identify-face").alt = t("face_alt", { where: where("image"), size });
    const answer = $("#identify-answer");
    answer.textContent = "";
    answer.classList.toggle("same", r.known);
    answer.classList.toggle("different", !r.known);
    answer.dataset.known = String(r.known);
    answer.dataset.identity = r.identity;
    answer.append(
      h("span", { class: "icon", "aria-hidden": "true", text: r.known ? "✓" : "?" }),
      r.known ? t("identity_known", { name: r.identity }) : t("identity_unknown"),
    );
    let explain;
    if (!r.matches.length) explain = t("empty_gallery");
    else if (r.threshold === null || r.threshold === undefined) explain = t("closed_set");
    else if (r.known) explain = t("known_explain", { name: r.identity, s: num(r.score), t: num(r.threshold) });
    else explain = t("unknown_explain", { t: num(r.threshold) });
    $("#identify-threshold").textContent = explain;
    const list = $("#identify-matches");
    list.textContent = "";
    for (const m of r.matches) {
      const bar = h("span");
      bar.style.width = `${Math.max(0, Math.min(1, m.score)) * 100}%`;
      list.append(
        h(
          "li",
          { class: `match ${m.accepted ? "accepted" : "rejected"}`, "data-name": m.name },
          thumb(m.thumbnail, m.name),
          h(
            "div",
            { class: "who" },
            h("p", { class: "name", text: m.name }),
            h("div", { class: "meter small", "aria-hidden": "true" }, bar),
            h("p", {
              class: "muted",
              text: `${t("score", { s: num(m.score) })} · ${m.accepted ? t("above") : t("below")}`,
            }),
          ),
        ),
      );
    }
    $("#identify-result").hidden = false;
  }

  // -- gallery -----------------------------------------------------------------------------
  const apiKey = () => $("#api-key").value.trim();

  async function loadPeople() {
    if (!state.health?.gallery) return;
    try {
      state.people = await api("/gallery/people");
      showError("people-error", null);
    } catch (err) {
      showError("people-error", err);
    }
    renderPeople();
  }

  function renderPeople() {
    const list = $("#people");
    list.textContent = "";
    const people = state.people?.people || [];
    $("#people-count").textContent = state.people ? `(${int(people.length)})` : "";
    $("#people-empty").hidden = people.length > 0 || !state.people;
    const writable = state.health?.writes_enabled;
    for (const p of people) {
      const remove = h("button", {
        type: "button",
        class: "danger",
        text: t("remove"),
        "aria-label": t("remove_label", { name: p.name }),
        disabled: !writable,
        onclick: () => removePerson(p.name),
      });
      list.append(
        h(
          "li",
          { class: "person", "data-name": p.name },
          thumb(p.thumbnail, p.name, p.created),
          h(
            "div",
            { class: "who" },
            h("p", { class: "name", text: p.name }),
            h("p", { class: "muted", text: t("photos", { n: int(p.n_images) }) }),
          ),
          remove,
        ),
      );
    }
    const done = $("#enroll-done");
    done.hidden = !state.status;
    done.textContent = state.status ? t(state.status.key, state.status.params) : "";
  }

  async function enroll(event) {
    event.preventDefault();
    showError("enroll-error", null);
    state.status = null;
    renderPeople();
    const name = $("#enroll-name").value.trim();
    const files = state.files.images;
    if (!apiKey()) return showError("enroll-error", { code: "missing_api_key" });
    if (!name) return showError("enroll-error", { code: "need_name" });
    if (!files.length) return showError("enroll-error", { code: "need_photos" });
    const tooBig = checkSizes(files, files.map((_, i) => `images[${i}]`));
    if (tooBig) return showError("enroll-error", tooBig);
    const form = new FormData();
    form.append("name", name);
    files.forEach((f) => form.append("images", f, f.name));
    const button = $("#enroll-run");
    button.disabled = true;
    try {
      const r = await api("/gallery/people", { method: "POST", body: form, key: apiKey() });
      state.status = { key: "enrolled", params: { name: r.person.name, n: r.person.n_images } };
      $("#enroll-name").value = "";
      setFiles($('[data-slot="images"]'), [], true);
      await loadPeople();
    } catch (err) {
      showError("enroll-error", { ...err, name });
    } finally {
      button.disabled = false;
    }
  }

  async function removePerson(name) {
    showError("people-error", null);
    if (!apiKey()) {
      showError("people-error", { code: "missing_api_key" });
      $("#api-key").focus();
      return;
    }
    if (!window.confirm(t("confirm_remove", { name }))) return;
    try {
      await api(`/gallery/people/${encodeURIComponent(name)}`, { method: "DELETE", key: apiKey() });
      state.status = { key: "removed", params: { name } };
      await loadPeople();
    } catch (err) {
      showError("people-error", { ...err, name });
    }
  }

  // -- model card --------------------------------------------------------------------------
  function facts(dl, rows) {
    dl.textContent = "";
    for (const [label, value] of rows) {
      if (value === null || value === undefined || value === "") continue;
      dl.append(h("div", { class: "fact" }, h("dt", { text: label }), h("dd", { text: value })));
    }
  }

  function initText(init) {
    if (!init) return null;
    if (typeof init === "string") return init;
    const fp = init.fingerprint ? ` (${String(init.fingerprint).slice(0, 12)})` : "";
    return `${init.name ?? "?"}${fp}`;
  }

  function tarRows(tarAtFar) {
    return Object.entries(tarAtFar || {})
      .filter(([, v]) => typeof v === "number")
      .map(([far, v]) => [t("k_tar", { far: farText(Number(far)) }), pct(v)]);
  }

  // siamface centre's record: whose mean face, and what held-out people said of it
  function centringText(c) {
    if (!c || typeof c !== "object") return null;
    const h = c.held_out || {};
    return t("k_centring_v", {
      ids: int(c.identities),
      data: c.data ?? "–",
      cond: c.condition ? t("k_centring_cond", { c: c.condition }) : "",
      a: num(h.plain?.auc, 4),
      b: num(h.centred?.auc, 4),
    });
  }

  function renderCard() {
    const c = state.card;
    if (!c) return;
    const tr = c.training || {};
    let trained = null;
    if (tr.train_identities !== undefined && tr.train_images !== undefined) {
      trained = t("k_trained_on_v", { ids: int(tr.train_identities), imgs: int(tr.train_images) });
    } else if (tr.train_identities !== undefined) {
      trained = t("k_ids_only", { ids: int(tr.train_identities) });
    }
    facts($("#card-model"), [
      [t("k_model"), tr.description || tr.name],
      [t("k_backbone"), c.backbone],
      [t("k_embedding"), c.embedding_size],
      [t("k_input"), t("k_input_v", { s: c.image_size, aligned: t(c.aligned ? "aligned_yes" : "aligned_no") })],
      [t("k_init"), initText(tr.init)],
      [t("k_weights"), tr.init ? null : tr.weights_source],
      [t("k_trained_on"), trained],
      [t("k_data"), Array.isArray(tr.data) ? tr.data.join(", ") : tr.data],
      [t("k_loss"), tr.loss],
      [t("k_epoch"), tr.epoch],
      [t("k_val_ids"), tr.val_identities],
      [t("k_pair_head"), c.pair_head ? t("k_pair_head_v") : null],
      [t("k_members"), Array.isArray(tr.members)
        ? tr.members.map((m) => `${m.name} × ${num(m.weight, 3)}`).join(" + ") : null],
      [t("k_tta"), tr.tta],
      [t("k_centring"), centringText(tr.centring)],
      [t("k_contract"), tr.input_contract],
      [t("k_license"), tr.license],
      [t("k_provenance"), tr.provenance],
      [t("k_paper"), tr.paper],
      [t("k_backend"), c.backend],
      [t("k_file"), c.source],
      [t("k_fingerprint"), c.fingerprint],
    ]);
    const rec = c.threshold;
    $("#card-threshold").textContent = rec && typeof rec.value === "number" ? num(rec.value, 4) : "–";
    $("#card-threshold-text").textContent = thresholdMeaning(rec);
    const v = c.validation;
    facts(
      $("#card-validation"),
      v ? [[t("k_auc"), num(v.auc, 4)], [t("k_eer"), pct(v.eer)], ...tarRows(v.tar_at_far)] : [],
    );
    const rep = c.report;
    $("#card-report-none").hidden = !!rep;
    $("#card-report-other").hidden = !rep || rep.same_model;
    const plots = $("#card-plots");
    plots.textContent = "";
    if (!rep) {
      facts($("#card-report"), []);
      return;
    }
    const d = rep.data || {};
    const pairs = rep.pairs || {};
    const m = rep.metrics || {};
    const at = rep.at_stored_threshold;
    facts($("#card-report"), [
      [t("k_created"), rep.created],
      [
        t("k_eval_data"),
        d.identities !== undefined ? t("k_eval_data_v", { ids: int(d.identities), imgs: int(d.images_embedded ?? 0) }) : null,
      ],
      [
        t("k_pairs"),
        pairs.genuine_pairs !== undefined
          ? t("k_pairs_v", { g: int(pairs.genuine_pairs), i: int(pairs.impostor_pairs_scored ?? 0) })
          : null,
      ],
      [t("k_auc"), num(m.auc, 4)],
      [t("k_eer"), pct(m.eer)],
      ...tarRows(m.tar_at_far),
      [t("k_at_stored"), at ? t("k_at_stored_v", { tar: pct(at.tar), far: farText(at.far) }) : null],
    ]);
    for (const kind of ["roc", "det", "histogram"]) {
      const url = rep.plots?.[kind];
      if (!url) continue;
      const caption = t(`plot_${kind}`);
      plots.append(
        h(
          "figure",
          { class: "plot", "data-kind": kind },
          h("a", { href: url, target: "_blank", rel: "noopener" }, h("img", { src: url, alt: caption })),
          h("figcaption", { text: caption }),
        ),
      );
    }
  }

  // -- watch: the server's --watch SOURCE ---------------------------------------------------
  // The picture is the server's MJPEG stream (boxes and names drawn there); the side lists
  // are polled from /watch/events once a second while the tab is open.
  let watchTimer = null;

  async function pollWatch() {
    try {
      state.watch = await api("/watch/events");
      state.watchMissing = false;
    } catch (err) {
      if (err.code === "no_watch") {
        state.watchMissing = true;
        stopWatch();
      } else {
        showError("watch-error", err);
      }
    }
    renderWatch();
  }

  function startWatch() {
    if (watchTimer) return;
    pollWatch();
    watchTimer = setInterval(pollWatch, 1000);
  }

  function stopWatch() {
    clearInterval(watchTimer);
    watchTimer = null;
  }

  function watchEventText(ev) {
    const s = (x) => num(x, 2);
    if (ev.event === "identity") {
      const key = ev.person === "unknown" ? "watch_ev_unknown" : "watch_ev_identity";
      return t(key, { track: ev.track, person: ev.person, score: s(ev.score), time: num(ev.time, 1) });
    }
    if (ev.event === "track") {
      return t("watch_ev_track", {
        track: ev.track,
        person: ev.person,
        first: num(ev.first.time, 1),
        last: num(ev.last.time, 1),
        faces: ev.faces,
      });
    }
    if (ev.event === "gap") {
      const st = t(ev.recovered ? "watch_gap_ok" : "watch_gap_lost");
      return t("watch_ev_gap", { seconds: num(ev.seconds, 1), state: st });
    }
    return null;
  }

  function renderWatch() {
    $("#watch-none").hidden = !state.watchMissing;
    const w = state.watch;
    $("#watch-live").hidden = !w;
    if (!w) return;
    const img = $("#watch-img");
    if (!img.getAttribute("src")) img.src = "/watch/stream";
    img.alt = t("watch_alt");
    $("#watch-source").textContent = w.source;
    $("#watch-state").textContent = `· ${t(w.running ? "watch_running" : "watch_ended")}`;
    if (w.error) showError("watch-error", { code: "watch", detail: w.error });
    const people = new Map();
    for (const ev of w.events) {
      if (ev.event !== "identity" && ev.event !== "track") continue;
      if (ev.person === "unknown") continue;
      const p = people.get(ev.person) || { first: Infinity, last: -Infinity };
      const first = ev.event === "track" ? ev.first.time : ev.time;
      const last = ev.event === "track" ? ev.last.time : ev.time;
      people.set(ev.person, { first: Math.min(p.first, first), last: Math.max(p.last, last) });
    }
    const list = $("#watch-people");
    list.replaceChildren(
      ...(people.size
        ? [...people].map(([person, p]) =>
            h("li", {
              class: "known",
              text: t("watch_person_line", { person, first: num(p.first, 1), last: num(p.last, 1) }),
            }),
          )
        : [h("li", { class: "muted", text: t("watch_no_people") })]),
    );
    const items = w.events
      .map((ev) => [ev, watchEventText(ev)])
      .filter(([, text]) => text)
      .slice(-50)
      .reverse();
    $("#watch-events").replaceChildren(
      ...items.map(([ev, text]) =>
        h("li", { class: ev.person === "unknown" ? "unknown" : "known", text }),
      ),
    );
  }

  // -- tabs, language, start-up ------------------------------------------------------------
  const tabs = () => $$("[role=tab]");

  function selectTab(tab, focus = false) {
    for (const other of tabs()) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
    const name = tab.id.replace("tab-", "");
    if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
    if (name === "gallery") loadPeople();
    if (name === "watch") startWatch();
    else stopWatch();
  }

  function setupTabs() {
    for (const tab of tabs()) {
      tab.addEventListener("click", () => selectTab(tab));
      tab.addEventListener("keydown", (e) => {
        const all = tabs();
        const i = all.indexOf(tab);
        const next = {
          ArrowRight: all[(i + 1) % all.length],
          ArrowLeft: all[(i - 1 + all.length) % all.length],
          Home: all[0],
          End: all[all.length - 1],
        }[e.key];
        if (next) {
          e.preventDefault();
          selectTab(next, true);
        }
      });
    }
    const fromHash = () => {
      const tab = document.getElementById(`tab-${location.hash.slice(1)}`);
      return tab && tab.getAttribute("role") === "tab" ? tab : null;
    };
    window.addEventListener("hashchange", () => {
      const tab = fromHash();
      if (tab) selectTab(tab);
    });
    selectTab(fromHash() || tabs()[0]);
  }

  function applyLanguage() {
    document.documentElement.lang = state.lang;
    document.title = `siamface · ${t("tagline")}`;
    for (const el of $$("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of $$("[data-i18n-aria]")) el.setAttribute("aria-label", t(el.dataset.i18nAria));
    const other = state.lang === "ja" ? "en" : "ja";
    const sw = $("#lang-switch");
    sw.textContent = LANGS[other];
    sw.lang = other;
    sw.setAttribute("aria-label", t("switch_language"));
    for (const slot of $$(".slot[data-slot]")) renderSlot(slot);
    for (const [id, err] of Object.entries(state.errors)) if (err) showError(id, err);
    renderVerify();
    renderIdentify();
    renderPeople();
    renderCard();
    renderWatch();
  }

  function applyHealth() {
    const hasGallery = !!state.health?.gallery;
    for (const el of $$("[data-needs-gallery]")) el.hidden = hasGallery;
    $("#identify-run").disabled = !hasGallery;
    const writable = !!state.health?.writes_enabled;
    $("#writes-disabled").hidden = !hasGallery || writable;
    for (const el of $$("#enroll-form input, #enroll-form button")) el.disabled = !writable;
  }

  async function start() {
    state.lang = pickLang();
    for (const slot of $$(".slot[data-slot]")) buildSlot(slot);
    setupTabs();
    $("#lang-switch").addEventListener("click", () => {
      state.lang = state.lang === "ja" ? "en" : "ja";
      storage("local")?.setItem("siamface.lang", state.lang);
      applyLanguage();
    });
    $("#verify-run").addEventListener("click", runVerify);
    $("#identify-run").addEventListener("click", runIdentify);
    $("#enroll-form").addEventListener("submit", enroll);
    $("#verify-slider").addEventListener("input", renderSlider);
    $("#verify-slider-reset").addEventListener("click", () => {
      if (!state.verify) return;
      $("#verify-slider").value = state.verify.threshold;
      renderSlider();
    });
    const key = $("#api-key");
    key.value = storage("session")?.getItem("siamface.key") || "";
    key.addEventListener("input", () => storage("session")?.setItem("siamface.key", key.value));
    applyLanguage();
    try {
      [state.health, state.card] = await Promise.all([api("/health"), api("/model-card")]);
    } catch (err) {
      showError("verify-error", err);
      return;
    }
    applyHealth();
    applyLanguage();
    await loadPeople();
    document.body.dataset.ready = "true";
  }

  document.addEventListener("DOMContentLoaded", start);
})();
