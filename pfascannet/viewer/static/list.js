// The slide list: every slide of the scan, sortable, each row a link to its page.
(function () {
  'use strict';
  const state = { rows: [], key: 'score', descending: true };

  function cell(text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function compare(a, b) {
    const x = a[state.key], y = b[state.key];
    if (x === y) return a.slide < b.slide ? -1 : 1;
    if (x === null || x === undefined) return 1;   // unknowns last, whatever the direction
    if (y === null || y === undefined) return -1;
    const order = x < y ? -1 : 1;
    return state.descending ? -order : order;
  }

  // A slide is opened only when first needed: its thumbnail is where a slide that cannot be opened
  // says so, and the list shows that in the row's problem column.
  const thumbs = {};

  function thumbnail(row, img) {
    if (!thumbs[row.slide]) {
      thumbs[row.slide] = fetch('/thumb/' + encodeURIComponent(row.slide) + '.png').then(function (r) {
        if (r.ok) return r.blob().then(function (b) { return { url: URL.createObjectURL(b) }; });
        return r.text().then(function (t) { return { error: t.trim() || ('HTTP ' + r.status) }; });
      }).catch(function (e) { return { error: e.message }; });
    }
    thumbs[row.slide].then(function (t) {
      if (t.url) { img.src = t.url; return; }
      img.replaceWith(document.createTextNode('(no image)'));
      row.problem = row.problem || t.error;
      const tr = document.querySelector('tr[data-slide="' + CSS.escape(row.slide) + '"] td.problem');
      if (tr) { tr.textContent = row.problem; tr.classList.add('error'); }
    });
  }

  function render() {
    const body = document.querySelector('#slides tbody');
    body.textContent = '';
    for (const row of state.rows.slice().sort(compare)) {
      const tr = document.createElement('tr');
      tr.dataset.slide = row.slide;
      if (row.tumour) tr.classList.add('tumour');
      const href = '/slide/' + encodeURIComponent(row.slide);
      const thumb = document.createElement('td');
      const a = document.createElement('a');
      a.href = href;
      const img = document.createElement('img');
      img.className = 'thumb';
      img.alt = row.slide;
      a.appendChild(img);
      thumb.appendChild(a);
      tr.appendChild(thumb);
      thumbnail(row, img);
      const name = document.createElement('td');
      const link = document.createElement('a');
      link.href = href;
      link.className = 'slide-link';
      link.textContent = row.slide;
      name.appendChild(link);
      tr.appendChild(name);
      tr.appendChild(cell(row.score === null ? '-' : row.score.toFixed(3), 'num'));
      tr.appendChild(cell(row.label === null ? 'unknown' : row.label, row.tumour ? 'label tumour' : 'label'));
      tr.appendChild(cell(row.n_lesions === null || row.n_lesions === undefined ? '-' : String(row.n_lesions), 'num'));
      const problem = cell(row.problem || '', row.problem ? 'error' : '');
      problem.className += ' problem';
      tr.appendChild(problem);
      body.appendChild(tr);
    }
    for (const th of document.querySelectorAll('th.sortable')) {
      th.classList.toggle('sorted', th.dataset.key === state.key);
      th.dataset.dir = th.dataset.key === state.key ? (state.descending ? 'desc' : 'asc') : '';
    }
  }

  for (const th of document.querySelectorAll('th.sortable')) {
    th.addEventListener('click', function () {
      if (state.key === th.dataset.key) state.descending = !state.descending;
      else { state.key = th.dataset.key; state.descending = th.dataset.key === 'score'; }
      render();
    });
  }

  fetch('/api/slides').then(function (r) {
    if (!r.ok) throw new Error('HTTP ' + r.status);
    return r.json();
  }).then(function (data) {
    document.getElementById('scan-dir').textContent = data.scan_dir + ' (' + data.slides.length + ' slides)';
    document.getElementById('truth-note').textContent = 'Truth: ' + data.truth;
    document.title = 'pfascannet view: ' + data.scan_dir;
    state.rows = data.slides;
    render();
  }).catch(function (e) {
    const p = document.getElementById('load-error');
    p.hidden = false;
    p.textContent = 'Cannot load the slide list: ' + e.message + ' (is the viewer still running?)';
  });
})();
