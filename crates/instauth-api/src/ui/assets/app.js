// instauth dashboard: refreshes the page from /ui/data.json without reloading it.
//
// Every value from the server is assigned as textContent or to a known attribute, never parsed
// as HTML, so a hostile agent name or audit reason stays text. Rows are matched by agent id and
// updated in place, so keyboard focus on a button survives a refresh.
'use strict';

(function () {
  const main = document.querySelector('main[data-dashboard]');
  if (!main) {
    return;
  }
  const interval = Math.max(1000, Number(main.dataset.refreshMs) || 3000);
  const statusLine = document.getElementById('refresh-status');
  const notice = document.getElementById('notice');
  const workspacesBox = document.getElementById('workspaces');
  const auditRows = document.getElementById('audit-rows');
  let timer = null;
  let stopped = false;
  let sectionSeq = 0;

  function setField(root, name, value) {
    root.querySelectorAll('[data-field="' + name + '"]').forEach(function (el) {
      if (el.textContent !== String(value)) {
        el.textContent = String(value);
      }
    });
  }

  function fillAgent(row, a) {
    row.dataset.agentId = a.id;
    ['name', 'parent', 'lifecycle', 'resource', 'resource_type', 'instance_id', 'auth', 'key']
      .forEach(function (f) { setField(row, f, a[f]); });
    const status = row.querySelector('[data-field="status"]');
    status.textContent = a.status;
    status.dataset.status = a.status;
    const beat = row.querySelector('[data-field="last_heartbeat"]');
    beat.textContent = a.last_heartbeat;
    beat.setAttribute('datetime', a.last_heartbeat_iso);
    const key = row.querySelector('[data-field="key"]');
    key.dataset.bound = String(a.key_bound);
    const form = row.querySelector('form.reset-key');
    form.setAttribute('action', a.reset_path);
    form.hidden = !a.key_bound;
  }

  function fillAudit(row, e) {
    row.dataset.auditId = String(e.id);
    ['provider', 'instance_id', 'agent_name', 'reason', 'outcome']
      .forEach(function (f) { setField(row, f, e[f]); });
    row.querySelector('[data-field="outcome"]').dataset.kind = e.outcome_kind;
    const time = row.querySelector('[data-field="time"]');
    time.textContent = e.time;
    time.setAttribute('datetime', e.time_iso);
  }

  function cloneTemplate(id) {
    return document.getElementById(id).content.firstElementChild.cloneNode(true);
  }

  function newSection() {
    const section = cloneTemplate('workspace-template');
    sectionSeq += 1;
    const headingId = 'ws-live-' + sectionSeq;
    section.querySelector('h3').id = headingId;
    section.setAttribute('aria-labelledby', headingId);
    section.querySelector('.table-scroll').setAttribute('aria-labelledby', headingId);
    return section;
  }

  // Puts `node` at position `index` of `parent`, moving it only when it is elsewhere (moving a
  // node that holds focus would drop the focus).
  function place(parent, node, index) {
    const at = parent.children[index] || null;
    if (at !== node) {
      parent.insertBefore(node, at);
    }
  }

  function renderWorkspaces(list) {
    const existing = new Map();
    workspacesBox.querySelectorAll(':scope > section[data-workspace]').forEach(function (s) {
      existing.set(s.dataset.workspace, s);
    });
    list.forEach(function (ws, i) {
      let section = existing.get(ws.name);
      existing.delete(ws.name);
      if (!section) {
        section = newSection();
        section.dataset.workspace = ws.name;
      }
      setField(section.querySelector('h3'), 'name', ws.name);
      setField(section, 'build_number', ws.build_number);
      setField(section, 'summary', ws.summary);
      const tbody = section.querySelector('tbody');
      const rows = new Map();
      tbody.querySelectorAll(':scope > tr[data-agent-id]').forEach(function (r) {
        rows.set(r.dataset.agentId, r);
      });
      ws.agents.forEach(function (a, j) {
        let row = rows.get(a.id);
        rows.delete(a.id);
        if (!row) {
          row = cloneTemplate('agent-row-template');
          row.querySelector('input[name="csrf"]').value =
            document.querySelector('form.logout input[name="csrf"]').value;
        }
        fillAgent(row, a);
        place(tbody, row, j);
      });
      rows.forEach(function (r) { r.remove(); });
      place(workspacesBox, section, i);
    });
    existing.forEach(function (s) { s.remove(); });
  }

  function renderAudit(list) {
    const rows = new Map();
    auditRows.querySelectorAll(':scope > tr[data-audit-id]').forEach(function (r) {
      rows.set(r.dataset.auditId, r);
    });
    list.forEach(function (e, i) {
      let row = rows.get(String(e.id));
      rows.delete(String(e.id));
      if (!row) {
        row = cloneTemplate('audit-row-template');
        fillAudit(row, e);
      }
      place(auditRows, row, i);
    });
    rows.forEach(function (r) { r.remove(); });
  }

  function render(data) {
    renderWorkspaces(data.workspaces);
    renderAudit(data.audit);
    document.getElementById('workspaces-empty').hidden = data.workspaces.length > 0;
    document.getElementById('audit-empty').hidden = data.audit.length > 0;
    const truncated = document.getElementById('workspaces-truncated');
    truncated.hidden = data.workspaces.length === data.workspaces_total;
    setField(truncated, 'shown', data.workspaces.length);
    setField(truncated, 'total', data.workspaces_total);
  }

  function signedOut() {
    stopped = true;
    statusLine.textContent = 'Your session has ended. Reload the page to sign in again.';
    statusLine.dataset.state = 'error';
  }

  async function refresh() {
    timer = null;
    if (stopped) {
      return;
    }
    try {
      const res = await fetch('/ui/data.json', {
        credentials: 'same-origin',
        cache: 'no-store',
        headers: { Accept: 'application/json' },
      });
      if (res.status === 401) {
        signedOut();
        return;
      }
      if (!res.ok) {
        throw new Error('HTTP ' + res.status);
      }
      const data = await res.json();
      render(data);
      statusLine.textContent = 'Updated ' + data.generated + '; refreshes every ' +
        Math.round(interval / 1000) + ' s.';
      statusLine.dataset.state = 'ok';
    } catch (err) {
      statusLine.textContent = 'Refreshing failed (' + err.message + '); trying again.';
      statusLine.dataset.state = 'error';
    }
    schedule(interval);
  }

  function schedule(ms) {
    if (timer !== null) {
      clearTimeout(timer);
    }
    timer = setTimeout(refresh, ms);
  }

  // Reset-key forms post in the background and refresh at once; without the script they post
  // normally and the server sends the browser back to /ui.
  document.addEventListener('submit', async function (event) {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains('reset-key')) {
      return;
    }
    event.preventDefault();
    const row = form.closest('tr');
    const name = row ? row.querySelector('[data-field="name"]').textContent : '';
    const button = form.querySelector('button');
    button.disabled = true;
    try {
      const res = await fetch(form.getAttribute('action'), {
        method: 'POST',
        credentials: 'same-origin',
        headers: { Accept: 'application/json' },
        body: new URLSearchParams(new FormData(form)),
      });
      if (res.status === 401) {
        signedOut();
        return;
      }
      if (!res.ok) {
        let message = 'HTTP ' + res.status;
        try {
          message = (await res.json()).message || message;
        } catch (ignored) {
          // Not JSON: keep the status.
        }
        throw new Error(message);
      }
      notice.textContent = 'The key of agent ' + name + ' was reset; its next signed exchange binds a key again.';
      notice.dataset.state = 'ok';
    } catch (err) {
      notice.textContent = 'Resetting the key of agent ' + name + ' failed: ' + err.message;
      notice.dataset.state = 'error';
    } finally {
      button.disabled = false;
    }
    schedule(0);
  });

  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'visible' && !stopped) {
      schedule(0);
    }
  });

  schedule(interval);
}());
