// A slide's page: OpenSeadragon over the slide's Deep Zoom tiles, the map's tiles stacked on the same
// grid, and an SVG layer for the truth outlines, contours and lesion markers (level-0 pixel coordinates).
(function () {
  'use strict';
  const SVGNS = 'http://www.w3.org/2000/svg';
  const MAX_LISTED = 50;
  const $ = function (id) { return document.getElementById(id); };
  const sid = decodeURIComponent(location.pathname.replace(/^\/slide\//, ''));
  const enc = encodeURIComponent(sid);
  const state = { info: null, viewer: null, overlay: null, overlayUrl: null, markers: [], selected: null,
                  threshold: Number($('threshold').value), opacity: Number($('opacity').value) / 100 };
  let gImage = null, gTruth = null, gContours = null, gMarkers = null;

  function svg(tag, attrs) {
    const el = document.createElementNS(SVGNS, tag);
    for (const k in attrs) el.setAttribute(k, attrs[k]);
    return el;
  }

  function ringsPath(rings) {
    return rings.filter(function (r) { return r.length > 1; }).map(function (r) {
      return 'M' + r.map(function (p) { return p[0] + ' ' + p[1]; }).join('L') + 'Z';
    }).join('');
  }

  function showProblems(info) {
    const lines = [];
    const add = function (what, text) { if (text) lines.push(what + ': ' + text); };
    add('slide', info.slide_error);
    add('map', info.map_error);
    add('lesions', info.lesions_error && info.lesions_error.indexOf('no lesion CSV') !== 0 ? info.lesions_error : null);
    add('truth', info.truth_error);
    const box = $('problems');
    box.hidden = lines.length === 0;
    box.textContent = '';
    for (const line of lines) {
      const p = document.createElement('p');
      p.textContent = line;
      box.appendChild(p);
    }
  }

  function header(info) {
    document.title = info.slide + ' - pfascannet view';
    $('slide-name').textContent = info.slide;
    const facts = [];
    facts.push('score ' + (info.score === null ? '-' : info.score.toFixed(3)));
    facts.push('truth ' + (info.label === null ? 'unknown' : info.label));
    if (info.dimensions) facts.push(info.dimensions[0] + ' x ' + info.dimensions[1] + ' px');
    if (info.mpp) facts.push(info.mpp.toFixed(3) + ' \u00b5m/px');
    facts.push((info.index + 1) + ' of ' + info.count);
    $('slide-facts').textContent = facts.join(' \u00b7 ');
    for (const [id, target] of [['prev', info.prev], ['next', info.next]]) {
      const a = $(id);
      if (target) a.href = '/slide/' + encodeURIComponent(target);
      else { a.removeAttribute('href'); a.classList.add('disabled'); }
    }
    const files = $('files');
    files.textContent = '';
    for (const [k, url] of Object.entries(info.files)) {
      const a = document.createElement('a');
      a.href = url;
      a.textContent = k;
      files.appendChild(a);
      files.appendChild(document.createTextNode(' '));
    }
    if (info.truth && info.truth.source) {
      files.appendChild(document.createTextNode('truth from ' + info.truth.source));
    }
  }

  // ------------------------------------------------------------------ the map overlay

  function overlayUrl() {
    const t = String(state.threshold).padStart(2, '0');
    return '/overlay/' + enc + '/t' + t + '.dzi';
  }

  function mapOpacity() { return $('layer-map').checked ? state.opacity : 0; }

  function loadOverlay() {
    const viewer = state.viewer;
    if (!viewer || !state.info.has_overlay || viewer.world.getItemCount() === 0) return;
    const url = overlayUrl();
    if (url === state.overlayUrl) return;
    state.overlayUrl = url;
    const bounds = viewer.world.getItemAt(0).getBounds();
    viewer.addTiledImage({
      tileSource: url, x: bounds.x, y: bounds.y, width: bounds.width, opacity: mapOpacity(),
      success: function (e) {
        if (state.overlayUrl !== url) { viewer.world.removeItem(e.item); return; }
        if (state.overlay) viewer.world.removeItem(state.overlay);
        state.overlay = e.item;
      },
      error: function () { state.overlayUrl = null; },
    });
  }

  function legend() {
    $('threshold-value').textContent = (state.threshold / 100).toFixed(2);
    $('opacity-value').textContent = Math.round(state.opacity * 100) + '%';
    $('legend-mask').style.width = state.threshold + '%';
  }

  // ------------------------------------------------------------------ outlines and markers

  function buildSvg(info) {
    const root = svg('svg', { class: 'annotations' });
    gImage = svg('g', {});
    gContours = svg('g', { class: 'contours' });
    gTruth = svg('g', { class: 'truth' });
    gMarkers = svg('g', { class: 'markers' });
    const truth = info.truth || { tumour: [], exclusion: [] };
    if (truth.tumour.length) gTruth.appendChild(svg('path', { d: ringsPath(truth.tumour), class: 'truth-tumour' }));
    if (truth.exclusion.length) gTruth.appendChild(svg('path', { d: ringsPath(truth.exclusion), class: 'truth-excl' }));
    for (const c of info.contours) gContours.appendChild(svg('path', { d: ringsPath(c.rings), class: 'contour' }));
    gImage.appendChild(gContours);
    gImage.appendChild(gTruth);
    root.appendChild(gImage);
    root.appendChild(gMarkers);
    state.viewer.canvas.appendChild(root);
  }

  function markerRadius(p) { return 5 + 9 * p; }

  function listLesions() {
    const info = state.info;
    const shown = info.lesions.filter(function (m) { return m.p * 100 >= state.threshold - 1e-6; }).slice(0, MAX_LISTED);
    const list = $('lesions');
    list.textContent = '';
    gMarkers.textContent = '';
    state.markers = [];
    shown.forEach(function (m, i) {
      const li = document.createElement('li');
      li.className = 'lesion';
      li.dataset.rank = String(i);
      li.tabIndex = 0;
      const um = info.mpp ? ' (' + (m.x * info.mpp / 1000).toFixed(2) + ', ' + (m.y * info.mpp / 1000).toFixed(2) + ' mm)' : '';
      li.textContent = m.p.toFixed(3) + um;
      li.title = 'level-0 px ' + m.x + ', ' + m.y;
      li.addEventListener('click', function () { zoomTo(i); });
      li.addEventListener('keydown', function (e) { if (e.key === 'Enter') zoomTo(i); });
      list.appendChild(li);
      const g = svg('g', { class: 'marker' });
      g.appendChild(svg('circle', { r: markerRadius(m.p) }));
      const label = svg('text', { x: markerRadius(m.p) + 3, y: 4 });
      label.textContent = m.p.toFixed(2);
      g.appendChild(label);
      gMarkers.appendChild(g);
      state.markers.push({ lesion: m, el: g, li: li });
    });
    const total = info.lesions.length;
    $('lesion-count').textContent = '(' + shown.length + ' of ' + total + (total >= 200 ? '+' : '') + ')';
    state.selected = null;
    redraw();
  }

  function zoomTo(i) {
    const viewer = state.viewer, info = state.info, item = viewer && viewer.world.getItemAt(0);
    if (!item) return;
    const m = state.markers[i].lesion;
    // 0.3 mm across: the lesion and its neighbourhood at about 20x, where the cells show.
    const half = info.mpp ? 150 / info.mpp : 600;
    viewer.viewport.fitBounds(item.imageToViewportRectangle(m.x - half, m.y - half, 2 * half, 2 * half));
    if (state.selected !== null && state.markers[state.selected]) {
      state.markers[state.selected].el.classList.remove('selected');
      state.markers[state.selected].li.classList.remove('selected');
    }
    state.selected = i;
    state.markers[i].el.classList.add('selected');
    state.markers[i].li.classList.add('selected');
  }

  function scalebar(screenPerPx) {
    const mpp = state.info.mpp;
    const box = $('scalebar');
    if (!mpp || !(screenPerPx > 0)) { box.hidden = true; return; }
    const umPerScreenPx = mpp / screenPerPx;
    const target = 140 * umPerScreenPx;
    const base = Math.pow(10, Math.floor(Math.log10(target)));
    let nice = base;
    for (const k of [2, 5]) if (k * base <= target) nice = k * base;
    $('scalebar-line').style.width = (nice / umPerScreenPx).toFixed(1) + 'px';
    $('scalebar-label').textContent = nice >= 1000 ? (nice / 1000) + ' mm' : (nice >= 1 ? nice : nice.toPrecision(1)) + ' \u00b5m';
    box.hidden = false;
  }

  function redraw() {
    const viewer = state.viewer, item = viewer && viewer.world.getItemAt(0);
    if (!item || !gImage) return;
    const p0 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const p1 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(10000, 0));
    const s = (p1.x - p0.x) / 10000;
    gImage.setAttribute('transform', 'translate(' + p0.x + ' ' + p0.y + ') scale(' + s + ')');
    for (const mk of state.markers) {
      const q = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(mk.lesion.x, mk.lesion.y));
      mk.el.setAttribute('transform', 'translate(' + q.x.toFixed(1) + ' ' + q.y.toFixed(1) + ')');
    }
    scalebar(s);
  }

  function layers() {
    if (state.overlay) state.overlay.setOpacity(mapOpacity());
    if (gMarkers) gMarkers.style.display = $('layer-lesions').checked ? '' : 'none';
    if (gTruth) gTruth.style.display = $('layer-truth').checked ? '' : 'none';
    if (gContours) gContours.style.display = $('layer-contours').checked ? '' : 'none';
  }

  function toggle(id) {
    const box = $(id);
    if (box.disabled) return;
    box.checked = !box.checked;
    layers();
  }

  // ------------------------------------------------------------------ set-up

  function keys(info) {
    document.addEventListener('keydown', function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      const target = e.target;
      if (target && (target.tagName === 'TEXTAREA' || (target.tagName === 'INPUT' && target.type === 'text'))) return;
      if (e.key === 'n' && info.next) location.href = '/slide/' + encodeURIComponent(info.next);
      else if (e.key === 'p' && info.prev) location.href = '/slide/' + encodeURIComponent(info.prev);
      else if (e.key === 'm') toggle('layer-map');
      else if (e.key === 'l') toggle('layer-lesions');
      else if (e.key === 't') toggle('layer-truth');
      else if (e.key === 'c') toggle('layer-contours');
    });
  }

  function controls(info) {
    $('layer-map').disabled = !info.has_overlay;
    if (!info.has_overlay) $('layer-map').checked = false;
    for (const id of ['layer-map', 'layer-lesions', 'layer-truth', 'layer-contours']) {
      $(id).addEventListener('change', layers);
    }
    $('opacity').addEventListener('input', function () {
      state.opacity = Number($('opacity').value) / 100;
      legend();
      layers();
    });
    $('threshold').addEventListener('input', function () {
      state.threshold = Number($('threshold').value);
      legend();
    });
    $('threshold').addEventListener('change', function () {
      state.threshold = Number($('threshold').value);
      legend();
      loadOverlay();
      listLesions();
    });
    legend();
  }

  function init(info) {
    state.info = info;
    header(info);
    showProblems(info);
    controls(info);
    keys(info);
    if (info.slide_error) {
      const box = $('viewer-error');
      box.hidden = false;
      box.textContent = 'This slide cannot be shown: ' + info.slide_error;
      return;
    }
    const viewer = OpenSeadragon({
      element: $('osd'),
      prefixUrl: '/static/openseadragon/images/',
      tileSources: '/dzi/' + enc + '.dzi',
      drawer: 'canvas',
      showNavigator: true,
      navigatorPosition: 'TOP_RIGHT',
      showRotationControl: false,
      maxZoomPixelRatio: 4,
      visibilityRatio: 0.5,
      animationTime: 0.5,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    });
    state.viewer = viewer;
    buildSvg(info);
    viewer.addHandler('open', function () { loadOverlay(); redraw(); });
    viewer.addHandler('update-viewport', redraw);
    viewer.addHandler('resize', redraw);
    listLesions();
    layers();
    window.pfaView = {
      viewer: viewer,
      info: info,
      // The viewport's centre in level-0 pixels (the browser test reads it).
      centreImagePx: function () {
        const item = viewer.world.getItemAt(0);
        const c = item.viewportToImageCoordinates(viewer.viewport.getCenter(true));
        return [c.x, c.y];
      },
      overlayLoaded: function () { return !!(state.overlay && state.overlay.getFullyLoaded()); },
    };
  }

  fetch('/api/slide/' + enc).then(function (r) {
    if (!r.ok) throw new Error('HTTP ' + r.status);
    return r.json();
  }).then(init).catch(function (e) {
    const box = $('viewer-error');
    box.hidden = false;
    box.textContent = 'Cannot load this slide\'s data: ' + e.message + ' (is the viewer still running?)';
  });
})();
