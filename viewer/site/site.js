// Perturber: a static site of one cube slice (written by `perturber export`).
// Reads data/slice.json (the slice), data/p/<key>.json (a point's top-5),
// img/<key>.png (the model input) and act/<key>-<m>.webp (activation maps),
// all relative to this page: it works from any static file host.
// <key> is the point's grid position along each slider axis, joined by "_".
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const COLOURS = ["#1f77b4", "#d62728"];
  const SVG = "http://www.w3.org/2000/svg";
  let meta = null;
  let pos = [];       // grid position along each slider axis
  let shown = 0;      // token of the newest update: older answers are dropped
  let curveAxis = 0;

  function text(v) {
    return typeof v === "number" ? String(Math.round(v * 1e6) / 1e6) : String(v);
  }

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children || []) e.appendChild(c);
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }

  function flat(p) {
    let i = 0;
    meta.axes.forEach((a, k) => { i = i * a.values.length + p[k]; });
    return i;
  }

  function key(p) { return p.join("_"); }

  // ------------------------------------------------------------ controls

  function buildControls() {
    const box = $("controls");
    box.textContent = "";
    meta.axes.forEach((axis, k) => {
      const label = el("label", {"for": "axis-" + axis.name});
      const value = el("span", {"class": "value", "id": "value-" + axis.name});
      label.append(axis.name + ": ", value);
      let input;
      if (axis.numeric) {
        input = el("input", {type: "range", min: 0, max: axis.values.length - 1, step: 1, value: pos[k],
                             id: "axis-" + axis.name, "data-axis": axis.name});
      } else {
        input = el("select", {id: "axis-" + axis.name, "data-axis": axis.name},
                   axis.values.map((v, i) => el("option", {value: i, text: text(v)})));
        input.value = String(pos[k]);
      }
      input.addEventListener("input", () => { pos[k] = Number(input.value); update(); });
      box.appendChild(el("div", {"class": "control"}, [label, input]));
      const option = el("option", {value: k, text: axis.name});
      $("curve-axis").appendChild(option);
    });
    $("curve-axis").value = String(curveAxis);
    $("curve-axis").addEventListener("change", () => { curveAxis = Number($("curve-axis").value); drawCurves(); });
  }

  function setControls() {
    meta.axes.forEach((axis, k) => {
      $("axis-" + axis.name).value = String(pos[k]);
      const units = axis.units ? " " + axis.units : "";
      $("value-" + axis.name).textContent = text(axis.values[pos[k]]) + units;
    });
  }

  // ------------------------------------------------------------ the point

  function readHash() {
    const query = new URLSearchParams(location.hash.slice(1));
    meta.axes.forEach((axis, k) => {
      const v = query.get(axis.name);
      const i = v === null ? -1 : axis.values.findIndex((x) => text(x) === v);
      if (i >= 0) pos[k] = i;
    });
  }

  function writeHash() {
    const query = new URLSearchParams();
    meta.axes.forEach((axis, k) => query.set(axis.name, text(axis.values[pos[k]])));
    history.replaceState(null, "", "#" + query.toString());
  }

  function update() {
    const token = ++shown, k = key(pos), status = meta.status[flat(pos)];
    delete document.body.dataset.shown;
    setControls();
    writeHash();
    $("where").textContent = meta.axes.map((a, i) => a.name + "=" + text(a.values[pos[i]])).join(", ");
    drawCurves();
    const image = $("image"), missing = $("image-missing");
    if (status !== "ok") {
      image.hidden = true;
      image.removeAttribute("src");
      missing.hidden = false;
      missing.textContent = status;
      meta.models.forEach((m, i) => showTop5(i, null, status));
      showMaps(null, status);
      document.body.dataset.shown = k;
      return;
    }
    missing.hidden = true;
    const loaded = meta.images ? new Promise((resolve) => {
      image.onload = image.onerror = resolve;
      image.src = "img/" + k + ".png";
      image.hidden = false;
    }) : Promise.resolve();
    if (!meta.images) { image.hidden = true; missing.hidden = false; missing.textContent = "images not stored"; }
    const top5 = fetch("data/p/" + k + ".json").then((r) => {
      if (!r.ok) throw new Error("data/p/" + k + ".json: " + r.status);
      return r.json();
    }).then((point) => {
      if (token !== shown) return;
      meta.models.forEach((m, i) => showTop5(i, point.top5[m], ""));
    }).catch((e) => {
      if (token === shown) meta.models.forEach((m, i) => showTop5(i, null, "cannot read this point (" + e.message + ")"));
    });
    showMaps(k, "");
    Promise.all([loaded, top5]).then(() => {
      if (token === shown) {
        document.body.dataset.shown = k;
        performance.mark("shown");
        // the frame after the one that draws it: on screen (benchmarks/export_site.py reads the mark)
        requestAnimationFrame(() => requestAnimationFrame(() => performance.mark("on-screen")));
      }
    });
  }

  function showTop5(i, rows, why) {
    const model = meta.models[i];
    const box = $("model-" + i);
    box.textContent = "";
    box.appendChild(el("h2", {text: model}));
    if (!rows) {
      box.appendChild(el("p", {"class": "missing", text: why}));
      return;
    }
    const table = el("table", {"class": "top5"});
    table.appendChild(el("tr", {}, ["#", "class", "probability"].map((h) => el("th", {text: h}))));
    rows.forEach(([index, name, p, logit, expected], r) => {
      const bar = el("div", {"class": "bar" + (expected ? " expected" : "")});
      bar.style.width = (100 * Math.max(0, Math.min(1, p))).toFixed(1) + "%";
      const cls = el("td", {"class": "name", title: "ImageNet class " + index + ", logit " + text(logit)});
      cls.append(name);
      if (expected) cls.appendChild(el("span", {"class": "tick", title: "one of the object's classes", text: " ✓"}));
      table.appendChild(el("tr", {"class": expected ? "expected" : ""}, [
        el("td", {text: String(r + 1)}), cls,
        el("td", {"class": "score"}, [el("div", {"class": "track"}, [bar]), el("span", {text: p.toFixed(3)})]),
      ]));
    });
    box.appendChild(table);
  }

  function showMaps(k, why) {
    const box = $("maps");
    box.textContent = "";
    if (!meta.layer) {
      box.appendChild(el("p", {"class": "missing", text: "This store has no activations of " + meta.models.join(" or ") + "."}));
      return;
    }
    if (!k) {
      box.appendChild(el("p", {"class": "missing", text: why}));
      return;
    }
    meta.models.forEach((m, i) => {
      if (!meta.maps[i]) {
        box.appendChild(el("p", {"class": "missing", text: m + ": no activations of " + meta.layer + " stored"}));
        return;
      }
      const labels = meta.neurons[i].map((n) => el("span", {text: "#" + n}));
      labels.forEach((s) => { s.style.width = meta.tile + "px"; });
      box.appendChild(el("figure", {"class": "maps"}, [
        el("figcaption", {text: m + " · " + meta.layer + " (red positive, blue negative)"}),
        el("img", {src: "act/" + k + "-" + i + ".webp", alt: m + " activation maps", height: meta.tile}),
        el("div", {"class": "labels"}, labels),
      ]));
    });
  }

  // ------------------------------------------------------------ curves

  function drawCurves() {
    const box = $("curve-plot");
    box.textContent = "";
    const axis = meta.axes[curveAxis], n = axis.values.length;
    const W = 560, H = 210, L = 40, R = 12, T = 10, B = 34;
    const plot = svg("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, "class": "curves", role: "img"});
    const numeric = axis.numeric && n > 1;
    const lo = numeric ? Math.min(...axis.values) : 0, hi = numeric ? Math.max(...axis.values) : Math.max(n - 1, 1);
    const x = (i) => L + (W - L - R) * (n === 1 ? 0.5 : ((numeric ? axis.values[i] : i) - lo) / (hi - lo || 1));
    const y = (p) => T + (H - T - B) * (1 - p);
    for (const p of [0, 0.5, 1]) {
      plot.appendChild(svg("line", {x1: L, x2: W - R, y1: y(p), y2: y(p), "class": "grid"}));
      const t = svg("text", {x: L - 6, y: y(p) + 4, "text-anchor": "end"});
      t.textContent = String(p);
      plot.appendChild(t);
    }
    axis.values.forEach((v, i) => {
      if (n > 12 && i % Math.ceil(n / 12)) return;
      const t = svg("text", {x: x(i), y: H - B + 16, "text-anchor": "middle"});
      t.textContent = text(v);
      plot.appendChild(t);
    });
    const label = svg("text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle"});
    label.textContent = axis.name + (axis.units ? " (" + axis.units + ")" : "");
    plot.appendChild(label);
    plot.appendChild(svg("line", {x1: x(pos[curveAxis]), x2: x(pos[curveAxis]), y1: T, y2: H - B, "class": "here"}));
    const along = axis.values.map((_, i) => { const p = pos.slice(); p[curveAxis] = i; return flat(p); });
    meta.models.forEach((m, mi) => {
      const c = meta.curves[m];
      for (const [what, dash] of [["expected", ""], ["top1", "5 4"]]) {
        let d = "", pen = "M";
        along.forEach((f, i) => {
          const v = c[what][f];
          if (v === null) { pen = "M"; return; }
          d += `${pen}${x(i).toFixed(1)},${y(v).toFixed(1)} `;
          pen = "L";
        });
        plot.appendChild(svg("path", {d: d, stroke: COLOURS[mi], "stroke-dasharray": dash, fill: "none", "class": "curve " + what}));
      }
      along.forEach((f, i) => {
        if (c.top1[f] === null) return;
        const dot = svg("circle", {cx: x(i), cy: y(c.top1[f]), r: 3, fill: COLOURS[mi]});
        const tip = svg("title", {});
        tip.textContent = `${m} at ${axis.name}=${text(axis.values[i])}: top-1 ${meta.classes[c.top1_class[f]]} ` +
          `(${c.top1[f].toFixed(3)}), expected classes ${c.expected[f] === null ? "-" : c.expected[f].toFixed(3)}`;
        dot.appendChild(tip);
        plot.appendChild(dot);
      });
    });
    plot.addEventListener("click", (event) => {
      const r = plot.getBoundingClientRect(), px = (event.clientX - r.left) * W / r.width;
      let best = 0;
      axis.values.forEach((_, i) => { if (Math.abs(x(i) - px) < Math.abs(x(best) - px)) best = i; });
      if (best !== pos[curveAxis]) { pos[curveAxis] = best; update(); }
    });
    const legend = el("div", {"class": "legend"}, meta.models.map((m, mi) => {
      const s = el("span", {text: "■ " + m});
      s.style.color = COLOURS[mi];
      return s;
    }));
    box.append(plot, legend);
  }

  // ------------------------------------------------------------ the page

  function buildPage() {
    document.title = "Perturber: " + meta.store + " · " + meta.cube;
    $("title").textContent = "Perturber · " + meta.store + " · cube " + meta.cube;
    $("held").textContent = meta.held.length ? "Held: " + meta.held.map(
      (h) => h.name + "=" + text(h.value) + (h.units ? " " + h.units : "") + " (" + (h.why === "canonical" ? "canonical" : "selected") + ")").join(", ") : "";
    $("models").textContent = "";
    meta.models.forEach((m, i) => $("models").appendChild(el("div", {"class": "model", id: "model-" + i})));
    $("layer").textContent = meta.layer ? "· layer " + meta.layer + " · the first stored neurons" : "";
    const footer = $("footer");
    const fixed = Object.entries(meta.fixed).map(([k, v]) => k + "=" + text(v)).join(", ");
    footer.appendChild(el("p", {text: `Exported by ${meta.generator} ${meta.version} from ${meta.store}, cube ${meta.cube}` +
      (fixed ? `; fixed in the cube: ${fixed}` : "") + ". Canonical: the grid value nearest the factor's default."}));
    if (meta.attributions.length) {
      footer.appendChild(el("p", {text: "Assets shown, with their authors and licences:"}));
      footer.appendChild(el("ul", {"class": "credits"}, meta.attributions.map((a) => el("li", {text: a}))));
    }
  }

  fetch("data/slice.json").then((r) => {
    if (!r.ok) throw new Error("data/slice.json: " + r.status);
    return r.json();
  }).then((m) => {
    meta = m;
    pos = meta.start.slice();
    curveAxis = Math.max(0, meta.axes.findIndex((a) => a.name === "yaw"));
    readHash();
    buildPage();
    buildControls();
    update();
  }).catch((e) => {
    $("controls").textContent = "This page cannot read its data (" + e.message + "): serve the folder over HTTP, " +
      "e.g. python -m http.server in it.";
  });
})();
