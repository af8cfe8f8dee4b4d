/* Baton's dashboard: the bearer token from sessionStorage on every API call, JSON rendered into the page.
 *
 * The page asks the JSON API (htmx requests, and fetch for the overview); the API decides what this token may read,
 * and a refusal is shown with the API's own message. The token stays in sessionStorage: never in a URL, a cookie
 * or the page's HTML. Everything rendered is escaped. */
(function () {
  "use strict";

  var TOKEN_KEY = "baton.token";
  var labels = {};
  var pendingCharts = {};
  var assessment = null;  // the assessment the page shows, for its drill-down
  var chartSeq = 0;
  try { labels = JSON.parse(document.getElementById("labels").textContent); } catch (e) { labels = {}; }

  function t(key, values) {
    var text = Object.prototype.hasOwnProperty.call(labels, key) ? labels[key] : key;
    Object.keys(values || {}).forEach(function (k) { text = text.replace("{" + k + "}", String(values[k])); });
    return text;
  }
  function label(prefix, value) {
    if (value === null || value === undefined || value === "") return "";
    var key = prefix + "." + value;
    return Object.prototype.hasOwnProperty.call(labels, key) ? labels[key] : String(value);
  }
  function esc(value) {
    if (value === null || value === undefined) return "";
    return String(value).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function when(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    if (isNaN(d.getTime())) return iso;
    return d.toLocaleString(lang() === "zh" ? "zh-CN" : "en-GB", {
      timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit"
    });
  }
  function pct(rate) {
    if (rate === null || rate === undefined) return "–";
    return (Number(rate) * 100).toFixed(2) + "%";
  }
  function lang() { return document.body ? document.body.getAttribute("data-lang") || "zh" : "zh"; }

  // The token ---------------------------------------------------------------------------------------------------
  function token() { try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; } }
  function claims(tok) {
    // For display only (who am I): the API verifies the token on every call.
    try {
      var part = tok.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      while (part.length % 4) part += "=";
      var json = decodeURIComponent(Array.prototype.map.call(atob(part), function (c) {
        return "%" + ("00" + c.charCodeAt(0).toString(16)).slice(-2);
      }).join(""));
      var c = JSON.parse(json);
      return c && typeof c.role === "string" ? c : null;
    } catch (e) { return null; }
  }
  function authHeaders() {
    var tok = token();
    return tok ? { Authorization: "Bearer " + tok } : {};
  }
  function api(path) {
    return fetch(path, { headers: Object.assign({ Accept: "application/json" }, authHeaders()), credentials: "omit" })
      .then(function (r) {
        return r.text().then(function (text) {
          var body = null;
          try { body = JSON.parse(text); } catch (e) { body = null; }
          return { status: r.status, body: body };
        });
      });
  }

  // Errors: the API's {"error": {"code", "message"}} --------------------------------------------------------------
  function errorBox(status, body) {
    var error = body && body.error ? body.error : { code: "http_" + status, message: t("error.network") };
    return '<div class="api-error" role="alert" data-status="' + esc(status) + '" data-code="' + esc(error.code) +
      '"><strong>' + esc(t("error.title")) + " (" + esc(status) + " " + esc(error.code) + ')</strong><p class="message">' +
      esc(error.message) + "</p></div>";
  }

  // Renderers: JSON from the API -> HTML --------------------------------------------------------------------------
  function table(headers, rows, cls) {
    return '<div class="table-wrap"><table class="' + (cls || "") + '"><thead><tr>' +
      headers.map(function (h) { return "<th>" + esc(h) + "</th>"; }).join("") + "</tr></thead><tbody>" +
      rows.join("") + "</tbody></table></div>";
  }
  function chart(option) {
    var id = "chart-" + (++chartSeq);
    pendingCharts[id] = option;
    return '<div class="chart" id="' + id + '" data-chart="' + id + '"></div>';
  }

  var renderers = {
    "community-options": function (org, elt) {
      var selected = elt.getAttribute("data-selected") || "";
      var units = (org.units || []).filter(function (u) { return u.kind === "community"; });
      return '<option value="">' + esc(t("board.any")) + "</option>" + units.map(function (u) {
        return '<option value="' + esc(u.id) + '"' + (u.id === selected ? " selected" : "") + ">" + esc(u.name) + "</option>";
      }).join("");
    },
    "own-community-options": function (org, elt) {
      // The communities this token's unit covers (every one for a county-wide role); the API still decides.
      var units = org.units || [], byId = {};
      units.forEach(function (u) { byId[u.id] = u; });
      var c = claims(token()) || {};
      var mine = c.unit && byId[c.unit] ? c.unit : null;
      function within(id) {
        for (var at = byId[id]; at; at = byId[at.parent]) if (at.id === mine) return true;
        return false;
      }
      var home = mine && byId[mine].kind === "grid" ? byId[mine].parent : null;
      var communities = units.filter(function (u) {
        return u.kind === "community" && (!mine || u.id === home || within(u.id));
      });
      var wanted = elt.getAttribute("data-selected") || home || (communities[0] || {}).id || "";
      return communities.map(function (u) {
        return '<option value="' + esc(u.id) + '"' + (u.id === wanted ? " selected" : "") + ">" + esc(u.name) + "</option>";
      }).join("");
    },
    leaderboard: function (rows) {
      if (!rows.length) return '<p class="empty">' + esc(t("volunteering.empty")) + "</p>";
      var body = rows.map(function (v) {
        return '<tr data-volunteer="' + esc(v.volunteer_id) + '"><td class="rank">' + esc(v.rank) + "</td>" +
          "<td>" + esc(v.name === null ? t("volunteering.erased") : v.name) +
          (v.party_member ? ' <span class="tag">' + esc(t("volunteering.party_member")) + "</span>" : "") + "</td>" +
          '<td class="num earned">' + esc(v.earned) + "</td>" +
          '<td class="num balance">' + esc(v.balance) + "</td>" +
          '<td class="num redeemed">' + esc(v.redeemed) + "</td>" +
          '<td class="num expired">' + esc(v.expired) + "</td>" +
          '<td class="num hours">' + esc(v.hours) + "</td></tr>";
      });
      var top = rows.slice(0, 10);
      var option = {
        animation: false,
        grid: { left: 8, right: 16, top: 32, bottom: 8, containLabel: true },
        tooltip: { trigger: "axis" },
        legend: { data: [t("volunteering.earned"), t("volunteering.balance")] },
        xAxis: { type: "category", data: top.map(function (v) { return v.name === null ? "–" : v.name; }), axisLabel: { interval: 0, rotate: 30 } },
        yAxis: { type: "value" },
        series: [
          { type: "bar", name: t("volunteering.earned"), data: top.map(function (v) { return Number(v.earned); }) },
          { type: "bar", name: t("volunteering.balance"), data: top.map(function (v) { return Number(v.balance); }) }
        ]
      };
      return chart(option) + table([t("rankings.rank"), t("volunteering.volunteer"), t("volunteering.earned"),
        t("volunteering.balance"), t("volunteering.redeemed"), t("volunteering.expired"), t("volunteering.hours")],
        body, "leaderboard");
    },
    rewards: function (rows) {
      if (!rows.length) return '<p class="empty">' + esc(t("volunteering.no_rewards")) + "</p>";
      var body = rows.map(function (r) {
        return '<tr data-reward="' + esc(r.reward_id) + '"' + (r.stock === 0 ? ' class="out"' : "") + "><td>" +
          esc(r.name) + "</td>" + '<td class="num cost">' + esc(r.cost) + "</td>" +
          '<td class="num stock">' + esc(r.stock) + (r.stock === 0 ? ' <span class="flag">' +
            esc(t("volunteering.out_of_stock")) + "</span>" : "") + "</td>" +
          '<td class="num handed-out">' + esc(r.handed_out) + "</td></tr>";
      });
      return table([t("volunteering.reward"), t("volunteering.cost"), t("volunteering.stock"),
        t("volunteering.handed_out")], body, "rewards");
    },
    lapses: function (rows) {
      // A lapse is a ledger entry against the balance: the API gives it negative; the total is the points lost.
      var lapsed = rows.filter(function (v) { return Number(v.expired) !== 0; });
      var total = lapsed.reduce(function (n, v) { return n + Math.abs(Number(v.expired)); }, 0);
      var summary = '<p class="lapse-total" data-total="' + esc(total.toFixed(2)) + '">' +
        esc(t("volunteering.lapsed_total", { points: total.toFixed(2), n: lapsed.length })) + "</p>";
      if (!lapsed.length) return summary;
      var body = lapsed.map(function (v) {
        return '<tr data-volunteer="' + esc(v.volunteer_id) + '"><td>' + esc(v.name === null ? t("volunteering.erased") : v.name) +
          '</td><td class="num expired">' + esc(v.expired) + '</td><td class="num balance">' + esc(v.balance) + "</td></tr>";
      });
      return summary + table([t("volunteering.volunteer"), t("volunteering.expired"), t("volunteering.balance")], body, "lapses");
    },
    "branch-overview": function (o) {
      var grades = Object.keys(o.by_grade || {});
      var colours = { red_flag: "#c23531", exemplary: "#d48265", standard: "#5b8c7a", below_standard: "#6b7280" };
      var option = {
        animation: false,
        tooltip: { trigger: "item" },
        legend: { bottom: 0 },
        series: [{
          type: "pie", radius: ["35%", "65%"], label: { formatter: "{b}: {c}" },
          data: grades.map(function (g) {
            return { name: label("grade", g), value: o.by_grade[g], itemStyle: { color: colours[g] || "#5470c6" } };
          })
        }]
      };
      return '<div class="cards"><div class="card figure"><span class="n" id="n-branches">' + esc(o.branches) +
        "</span><span>" + esc(t("branches.count")) + '</span></div><div class="card figure warn"><span class="n" id="n-open-rect">' +
        esc(o.open_rectifications) + "</span><span>" + esc(t("branches.open")) + "</span></div>" +
        '<div class="card figure alert"><span class="n" id="n-overdue-rect">' + esc(o.overdue_rectifications) +
        "</span><span>" + esc(t("branches.overdue")) + "</span></div></div>" + chart(option);
    },
    branches: function (rows) {
      if (!rows.length) return '<p class="empty">' + esc(t("branches.empty")) + "</p>";
      var body = rows.map(function (b) {
        return '<tr data-branch="' + esc(b.branch_id) + '"' + (b.overdue_rectifications ? ' class="overdue"' : "") + ">" +
          '<td><button type="button" class="link" hx-get="/v1/branches/' + esc(encodeURIComponent(b.branch_id)) +
          '" hx-target="#branch-detail" data-render="branch">' + esc(b.name) + "</button></td>" +
          "<td>" + esc(b.community_id || b.parent_id) + "</td>" +
          '<td class="grade">' + (b.grade ? '<span class="grade g-' + esc(b.grade) + '">' + esc(label("grade", b.grade)) +
            "</span>" : "–") + "</td>" +
          '<td class="num total">' + esc(b.total === null ? "–" : b.total) + "</td>" +
          "<td>" + esc(b.last_audit_on || "–") + "</td>" +
          '<td class="num open">' + esc(b.open_rectifications) + "</td>" +
          '<td class="num overdue">' + esc(b.overdue_rectifications) + "</td></tr>";
      });
      return table([t("branches.branch"), t("col.community"), t("branches.grade"), t("branches.total"),
        t("branches.last_audit"), t("branches.open"), t("branches.overdue")], body, "branches");
    },
    branch: function (b) {
      var audit = (b.audit_history || [])[0] || null;
      (b.audit_history || []).forEach(function (a) { if (!audit || a.position > audit.position) audit = a; });
      var parts = ['<h2 data-branch="' + esc(b.branch_id) + '">' + esc(b.name) + " · " +
        esc(b.grade ? label("grade", b.grade) : "–") + "</h2>"];
      if (audit) {
        var aspects = audit.aspects || [];
        var option = {
          animation: false,
          grid: { left: 8, right: 24, top: 16, bottom: 8, containLabel: true },
          tooltip: { trigger: "axis" },
          xAxis: { type: "value", min: 0, max: 100, name: "%" },
          yAxis: { type: "category", inverse: true, data: aspects.map(function (a) { return label("aspect", a.code); }) },
          series: [{ type: "bar", label: { show: true, position: "right" }, data: aspects.map(function (a) {
            return Number(a.weight) ? Math.round(10000 * Number(a.score) / Number(a.weight)) / 100 : 0;
          }) }]
        };
        parts.push('<p class="help">' + esc(t("branches.audited", { on: audit.audited_on, version: audit.standard_version,
          total: audit.total })) + "</p>" + chart(option) + table([t("branches.aspect"), t("branches.score"), t("branches.weight")],
          aspects.map(function (a) {
            return '<tr data-aspect="' + esc(a.code) + '"><td>' + esc(label("aspect", a.code)) + '</td><td class="num score">' +
              esc(a.score) + '</td><td class="num weight">' + esc(a.weight) + "</td></tr>";
          }), "aspects"));
      } else {
        parts.push('<p class="empty">' + esc(t("branches.not_audited")) + "</p>");
      }
      var rects = b.rectifications || [];
      parts.push("<h3>" + esc(t("branches.rectifications")) + "</h3>");
      parts.push(rects.length ? table([t("branches.finding"), t("col.due"), t("col.status")], rects.map(function (r) {
        return '<tr data-rectification="' + esc(r.rectification_id) + '" data-status="' + esc(r.status) + '"' +
          (r.status === "overdue" ? ' class="overdue"' : "") + '><td class="text">' + esc(r.text) + "</td><td>" +
          esc(r.due_on) + '</td><td><span class="status s-' + esc(r.status) + '">' + esc(label("rectification", r.status)) +
          "</span></td></tr>";
      }), "rectifications") : '<p class="empty">' + esc(t("branches.no_rectifications")) + "</p>");
      return parts.join("");
    },
    assessment: function (a) {
      assessment = a;
      document.getElementById("drill").innerHTML = "";
      var units = (a.units || []).slice().sort(function (x, y) {
        return (x.rank === null) - (y.rank === null) || (x.rank || 0) - (y.rank || 0) || (x.unit < y.unit ? -1 : 1);
      });
      if (!units.length) return '<p class="empty">' + esc(t("assessment.empty")) + "</p>";
      var indicators = units[0].indicators || [];
      var body = units.map(function (u) {
        return '<tr data-unit="' + esc(u.unit) + '"><td class="rank">' + esc(u.rank === null ? "–" : u.rank) + "</td><td>" +
          esc(u.name) + '</td><td class="num total">' + esc(u.total === null ? "–" : u.total) + '</td><td class="grade">' +
          esc(u.grade ? label("agrade", u.grade) : "–") + "</td>" + u.indicators.map(function (i) {
            return '<td class="num ind" data-indicator="' + esc(i.code) + '"><button type="button" class="link drill" data-unit="' +
              esc(u.unit) + '" data-indicator="' + esc(i.code) + '">' + esc(i.score === null ? "–" : i.score) + "</button></td>";
          }).join("") + "</tr>";
      });
      var ranked = units.filter(function (u) { return u.total !== null; });
      var option = {
        animation: false,
        grid: { left: 8, right: 16, top: 32, bottom: 8, containLabel: true },
        tooltip: { trigger: "axis" },
        xAxis: { type: "category", data: ranked.map(function (u) { return u.name; }), axisLabel: { interval: 0, rotate: 30 } },
        yAxis: { type: "value", min: 0, max: 100, name: t("assessment.total") },
        series: [{ type: "bar", data: ranked.map(function (u) { return Number(u.total); }), label: { show: true, position: "top" } }]
      };
      return '<p class="help" data-cutoff="' + esc(a.cutoff_position) + '">' + esc(t("assessment.cutoff",
        { version: a.scheme_version, position: a.cutoff_position })) + "</p>" + chart(option) +
        table([t("rankings.rank"), t("rankings.unit"), t("assessment.total"), t("assessment.grade")].concat(
          indicators.map(function (i) { return i.name + " (" + i.weight + ")"; })), body, "assessment");
    },
    finalisations: function (rows) {
      var standing = rows.filter(function (f) { return !f.voided; });
      // A finalised unit type is shown as finalised: its scores at the finalisation's cut-off, not as of now.
      var form = document.getElementById("assessment-filter");
      var type = form.querySelector("[name=unit_type]").value;
      var final = standing.filter(function (f) { return f.unit_type === type; })[0];
      var cutoff = form.querySelector("[name=position]");
      var wanted = final ? String(final.cutoff_position) : "";
      if (cutoff.value !== wanted) {
        cutoff.value = wanted;
        setTimeout(function () { window.htmx.trigger(form, "change"); }, 0);
      }
      if (!standing.length) return '<p class="help provisional">' + esc(t("assessment.provisional")) + "</p>";
      return standing.map(function (f) {
        return '<p class="ok final" data-unit-type="' + esc(f.unit_type) + '" data-tree-size="' + esc(f.tree_size) + '">' +
          esc(t("assessment.final", { type: label("unit_type", f.unit_type), size: f.tree_size, root: f.root,
            at: when(f.finalised_at) })) + "</p>";
      }).join("");
    },
    board: function (page) {
      var items = page.items || [];
      if (!items.length) return '<p class="empty">' + esc(t("board.empty")) + "</p>";
      var rows = items.map(function (w) {
        var href = "/whistle?lang=" + encodeURIComponent(lang()) + "&id=" + encodeURIComponent(w.whistle_id);
        return '<tr data-whistle="' + esc(w.whistle_id) + '" data-community="' + esc(w.community_id) + '"' +
          (w.overdue ? ' class="overdue"' : "") + ">" +
          '<td><a href="' + esc(href) + '">' + esc(w.title) + "</a></td>" +
          "<td>" + esc(w.community_id) + "</td>" +
          "<td>" + esc(w.category) + "</td>" +
          '<td><span class="status s-' + esc(w.status) + '">' + esc(label("status", w.status)) + "</span></td>" +
          "<td>" + esc((w.summoned || []).join(", ")) + "</td>" +
          "<td>" + esc(w.lead_department || "") + "</td>" +
          "<td>" + esc(when(w.blown_at)) + "</td>" +
          "<td>" + (w.overdue ? '<span class="flag">' + esc(t("yes")) + "</span>" : "") + "</td>" +
          "<td>" + (w.escalation_level ? esc(w.escalated_to || String(w.escalation_level)) : "") + "</td></tr>";
      });
      var more = page.next_cursor ? '<p class="help">' + esc(t("overview.more", { n: items.length })) + "</p>" : "";
      return table([t("col.title"), t("col.community"), t("col.category"), t("col.status"), t("col.departments"),
        t("col.lead"), t("col.blown_at"), t("col.overdue"), t("col.escalation")], rows, "board") + more;
    },
    whistle: function (w) {
      var steps = (w.timeline || []).map(function (e) {
        var who = e.actor ? [e.actor.role, e.actor.unit].filter(Boolean).join(" · ") : "";
        var note = e.data && (e.data.note || e.data.summary || e.data.result || e.data.reason || e.data.comment ||
          e.data.rating && label("rating", e.data.rating) || e.data.department || e.data.lead_department);
        return '<li class="step" data-type="' + esc(e.type) + '"><span class="what">' + esc(label("event", e.type)) +
          '</span> <time>' + esc(when(e.occurred_at)) + '</time> <span class="who">' + esc(who) + "</span>" +
          (note ? '<p class="note">' + esc(typeof note === "string" ? note : JSON.stringify(note)) + "</p>" : "") + "</li>";
      });
      return '<article class="whistle" data-whistle="' + esc(w.whistle_id) + '"><h1>' + esc(w.title) + "</h1>" +
        '<p><span class="status s-' + esc(w.status) + '">' + esc(label("status", w.status)) + "</span> " +
        esc(w.community_id) + " · " + esc(w.category) + " · " + esc(when(w.blown_at)) +
        (w.overdue ? ' <span class="flag">' + esc(t("col.overdue")) + "</span>" : "") + "</p>" +
        "<dl><dt>" + esc(t("whistle.description")) + "</dt><dd>" + esc(w.description) + "</dd>" +
        "<dt>" + esc(t("col.departments")) + "</dt><dd>" + esc((w.summoned || []).join(", ")) + "</dd>" +
        "<dt>" + esc(t("col.lead")) + "</dt><dd>" + esc(w.lead_department || "–") + "</dd>" +
        "<dt>" + esc(t("whistle.rating")) + "</dt><dd>" + esc(label("rating", w.rating) || "–") + "</dd></dl>" +
        "<h2>" + esc(t("whistle.timeline")) + '</h2><ol class="timeline">' + steps.join("") + "</ol></article>";
    },
    ranking: function (r) {
      var units = r.units || [];
      var final = r.final ? '<p class="ok final" data-digest="' + esc(r.final.digest) + '" data-tree-size="' +
        esc(r.final.tree_size) + '">' + esc(t("rankings.final", { at: when(r.final.finalised_at), size: r.final.tree_size,
          root: r.final.root, digest: r.final.digest })) + "</p>" : '<p class="help provisional">' + esc(t("rankings.provisional")) + "</p>";
      if (!units.length) return final + '<p class="empty">' + esc(t("rankings.empty")) + "</p>";
      var rows = units.map(function (u) {
        return '<tr data-unit="' + esc(u.unit) + '"><td class="rank">' + esc(u.rank === null ? "–" : u.rank) + "</td>" +
          "<td>" + esc(u.name) + "</td>" +
          '<td class="num">' + esc(u.cases) + "</td>" +
          '<td class="num response">' + esc(pct(u.response_rate)) + "</td>" +
          '<td class="num resolution">' + esc(pct(u.resolution_rate)) + "</td>" +
          '<td class="num satisfaction">' + esc(pct(u.satisfaction_rate)) + "</td>" +
          '<td class="num composite">' + esc(u.composite === null ? "–" : u.composite) + "</td>" +
          '<td class="num change">' + esc(u.change === null ? "–" : u.change) + "</td>" +
          '<td class="class">' + (u["class"] ? '<span class="cls c-' + esc(u["class"]) + '">' +
            esc(label("class", u["class"])) + "</span>" : "–") + "</td></tr>";
      });
      var ranked = units.filter(function (u) { return u.composite !== null; });
      var colours = { advanced: "#c23531", good: "#d48265", average: "#91c7ae", lagging: "#749f83" };
      var option = {
        animation: false,
        grid: { left: 8, right: 16, top: 40, bottom: 8, containLabel: true },
        tooltip: { trigger: "axis" },
        xAxis: { type: "category", data: ranked.map(function (u) { return u.name; }), axisLabel: { interval: 0, rotate: 30 } },
        yAxis: { type: "value", min: 0, max: 100, name: t("rankings.composite") },
        series: [{
          type: "bar", name: t("rankings.composite"),
          data: ranked.map(function (u) {
            return { value: Number(u.composite), itemStyle: { color: colours[u["class"]] || "#5470c6" } };
          }),
          label: { show: true, position: "top" }
        }]
      };
      return final + chart(option) + table([t("rankings.rank"), t("rankings.unit"), t("rankings.cases"), t("rankings.response"),
        t("rankings.resolution"), t("rankings.satisfaction"), t("rankings.composite"), t("rankings.change"),
        t("rankings.class")], rows, "ranking");
    },
    scorecards: function (body) {
      var cards = Array.isArray(body) ? body : [body];
      if (!cards.length) return '<p class="empty">' + esc(t("scorecards.empty")) + "</p>";
      function shown(value) { return value === null || value === undefined ? "–" : value + "%"; }
      var rows = cards.map(function (c) {
        return '<tr data-department="' + esc(c.department) + '"><td>' + esc(c.department) + "</td>" +
          '<td class="num">' + esc(c.summoned) + "</td>" +
          '<td class="num report-in">' + esc(shown(c.report_in_on_time_pct)) + "</td>" +
          '<td class="num">' + esc(c.work_orders) + "</td>" +
          '<td class="num handled">' + esc(shown(c.handled_on_time_pct)) + "</td>" +
          '<td class="num satisfaction">' + esc(shown(c.satisfaction_pct)) + "</td>" +
          '<td class="num">' + esc(c.declines) + "</td>" +
          '<td class="num">' + esc(c.reopens) + "</td>" +
          '<td class="num">' + esc(c.escalations) + "</td></tr>";
      });
      function series(key, name) {
        return { type: "bar", name: name, data: cards.map(function (c) { return c[key] === null ? null : Number(c[key]); }) };
      }
      var option = {
        animation: false,
        grid: { left: 8, right: 16, top: 40, bottom: 8, containLabel: true },
        tooltip: { trigger: "axis" },
        legend: { data: [t("scorecards.report_in"), t("scorecards.handled"), t("scorecards.satisfaction")] },
        xAxis: { type: "category", data: cards.map(function (c) { return c.department; }), axisLabel: { interval: 0, rotate: 30 } },
        yAxis: { type: "value", min: 0, max: 100 },
        series: [series("report_in_on_time_pct", t("scorecards.report_in")),
          series("handled_on_time_pct", t("scorecards.handled")),
          series("satisfaction_pct", t("scorecards.satisfaction"))]
      };
      return chart(option) + table([t("scorecards.department"), t("scorecards.summoned"), t("scorecards.report_in"),
        t("scorecards.work_orders"), t("scorecards.handled"), t("scorecards.satisfaction"), t("scorecards.declines"),
        t("scorecards.reopens"), t("scorecards.escalations")], rows, "scorecards");
    },
    reports: function (page) {
      var items = page.items || [];
      if (!items.length) return '<p class="empty">' + esc(t("reports.empty")) + "</p>";
      var rows = items.map(function (r) {
        var whistle = r.whistle_id ? '<a href="/whistle?lang=' + esc(encodeURIComponent(lang())) + "&amp;id=" +
          esc(encodeURIComponent(r.whistle_id)) + '">' + esc(label("status", r.whistle_status) || "→") + "</a>" : "";
        return '<tr data-report="' + esc(r.report_id) + '" data-community="' + esc(r.community_id) + '"' +
          (r.overdue ? ' class="overdue"' : "") + "><td>" + esc(when(r.raised_at)) + "</td>" +
          "<td>" + esc(r.community_id) + "</td>" +
          "<td>" + esc(label("channel", r.channel)) + "</td>" +
          "<td>" + esc(r.category) + "</td>" +
          '<td class="text">' + esc(r.description) + "</td>" +
          '<td><span class="status s-' + esc(r.status) + '">' + esc(label("status", r.status)) + "</span></td>" +
          "<td>" + esc(when(r.due_at)) + (r.overdue ? ' <span class="flag">' + esc(t("col.overdue")) + "</span>" : "") +
          "</td><td>" + whistle + "</td></tr>";
      });
      return table([t("col.raised_at"), t("col.community"), t("col.channel"), t("col.category"), t("col.description"),
        t("col.status"), t("col.due"), t("col.whistle")], rows, "reports");
    }
  };

  function drawCharts(root) {
    if (!window.echarts) return;
    Array.prototype.forEach.call(root.querySelectorAll("[data-chart]"), function (el) {
      var option = pendingCharts[el.id];
      if (!option) return;
      delete pendingCharts[el.id];
      window.echarts.init(el).setOption(option);
    });
  }

  // htmx: the token on every request, empty filters dropped, {name} in a path from the form, JSON rendered ----------
  if (window.htmx) {
    window.htmx.defineExtension("baton", {
      transformResponse: function (text, xhr, elt) {
        var body = null;
        try { body = JSON.parse(text); } catch (e) { body = null; }
        if (xhr.status >= 400 || body === null) return errorBox(xhr.status, body);
        var render = renderers[elt.getAttribute("data-render")];
        return render ? render(body, elt) : esc(text);
      }
    });
  }

  document.addEventListener("htmx:configRequest", function (evt) {
    var tok = token();
    if (!tok) { evt.preventDefault(); return; } // not signed in: ask nothing (the page says so)
    evt.detail.headers.Authorization = "Bearer " + tok;
    evt.detail.headers.Accept = "application/json";
    var own = evt.detail.elt.getAttribute("data-department-path");
    var c = claims(tok);
    if (own && c && c.role === "department" && c.unit) {
      // A department's own card: the page asks for it; the API still decides what the token may read.
      evt.detail.path = own.replace("{unit}", encodeURIComponent(c.unit));
    }
    var params = evt.detail.parameters;
    var names = Object.keys(params);
    var missing = false;
    evt.detail.path = evt.detail.path.replace(/\{(\w+)\}/g, function (m, name) {
      var value = params[name];
      delete params[name];
      if (!value) missing = true;
      return encodeURIComponent(value || "");
    });
    if (missing) { evt.preventDefault(); return; } // a choice the page has not made yet (its options still loading)
    names.forEach(function (name) { if (params[name] === "") delete params[name]; });
  });

  document.addEventListener("htmx:afterSettle", function (evt) {
    drawCharts(evt.detail.target || document);
    var elt = evt.detail.elt;
    if (elt && elt.getAttribute && elt.getAttribute("data-render") === "own-community-options") {
      window.htmx.trigger(document.body, "baton:ready");  // the community is chosen: the page's parts read it
    }
  });
  document.addEventListener("htmx:sendError", function (evt) {
    var target = evt.detail.target;
    if (target) target.innerHTML = errorBox(0, null);
  });

  // The assessment's drill-down: an indicator of a unit, its formula, facts and the events behind it ------------
  var DRILL_SHOWN = 500;
  document.addEventListener("click", function (evt) {
    var button = evt.target.closest ? evt.target.closest("button.drill") : null;
    if (!button || !assessment) return;
    var unit = (assessment.units || []).filter(function (u) { return u.unit === button.getAttribute("data-unit"); })[0];
    if (!unit) return;
    var ind = unit.indicators.filter(function (i) { return i.code === button.getAttribute("data-indicator"); })[0];
    var events = ind.events || [];
    var facts = Object.keys(ind.facts || {}).map(function (f) {
      return '<tr data-fact="' + esc(f) + '"><td><code>' + esc(f) + '</code></td><td class="num">' + esc(ind.facts[f]) + "</td></tr>";
    });
    var links = events.slice(0, DRILL_SHOWN).map(function (p) {
      return '<li><a data-position="' + esc(p) + '" href="/audit?lang=' + esc(encodeURIComponent(lang())) + "&amp;position=" +
        esc(p) + '">' + esc(p) + "</a></li>";
    });
    var drill = document.getElementById("drill");
    drill.innerHTML = '<h2 data-unit="' + esc(unit.unit) + '" data-indicator="' + esc(ind.code) + '">' + esc(unit.name) +
      " · " + esc(ind.name) + "</h2><dl><dt>" + esc(t("assessment.formula")) + "</dt><dd><code>" + esc(ind.formula) +
      "</code></dd><dt>" + esc(t("assessment.value")) + "</dt><dd>" + esc(ind.value === null ? "–" : ind.value) + "</dd><dt>" +
      esc(t("assessment.score")) + "</dt><dd>" + esc(ind.score === null ? "–" : ind.score) + "</dd></dl>" +
      table([t("assessment.fact"), t("assessment.count")], facts, "facts") +
      '<h3 data-events="' + esc(events.length) + '">' + esc(t("assessment.events", { n: events.length })) + "</h3>" +
      '<p class="help">' + esc(t("assessment.events_help")) + '</p><ol class="positions">' + links.join("") + "</ol>" +
      (events.length > DRILL_SHOWN ? '<p class="help">' + esc(t("assessment.more", { n: DRILL_SHOWN })) + "</p>" : "");
    drill.scrollIntoView({ block: "start" });
  });

  // The overview: every whistle this token sees (up to 2,000), counted in the browser -----------------------------
  function overview() {
    var section = document.getElementById("overview");
    if (!section || !token()) return;
    var items = [], pages = 0, LIMIT = 200, MAX_PAGES = 10;
    function next(cursor) {
      var path = "/v1/whistles?limit=" + LIMIT + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
      return api(path).then(function (r) {
        if (r.status !== 200) {
          document.getElementById("overview-error").innerHTML = errorBox(r.status, r.body);
          return null;
        }
        items = items.concat(r.body.items || []);
        pages += 1;
        if (r.body.next_cursor && pages < MAX_PAGES) return next(r.body.next_cursor);
        return r.body.next_cursor ? "more" : "all";
      });
    }
    next(null).then(function (done) {
      if (done === null) return;
      var open = items.filter(function (w) { return w.status !== "closed"; });
      document.getElementById("n-open").textContent = open.length;
      document.getElementById("n-overdue").textContent = items.filter(function (w) { return w.overdue; }).length;
      document.getElementById("n-escalated").textContent = open.filter(function (w) { return w.escalation_level > 0; }).length;
      document.getElementById("n-closed").textContent = items.length - open.length;
      document.getElementById("overview-note").textContent = t("overview.counted", { n: items.length }) +
        (done === "more" ? t("overview.more", { n: items.length }) : "");
      trend(items);
    }).catch(function () {
      document.getElementById("overview-error").innerHTML = errorBox(0, null);
    });
  }

  // The map: residents' reports where they carry coordinates, over the grids' boundaries (no tiles: offline) ----
  function casemap() {
    var section = document.getElementById("casemap");
    if (!section || !token()) return;
    var reports = [], LIMIT = 200, MAX_PAGES = 10;
    function page(cursor, n) {
      return api("/v1/reports?limit=" + LIMIT + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "")).then(function (r) {
        if (r.status !== 200) throw r;
        reports = reports.concat(r.body.items || []);
        return r.body.next_cursor && n < MAX_PAGES ? page(r.body.next_cursor, n + 1) : !!r.body.next_cursor;
      });
    }
    Promise.all([api("/v1/org/boundaries"), api("/v1/org"), page(null, 1)]).then(function (answers) {
      var bounds = answers[0], org = answers[1], more = answers[2];
      if (bounds.status !== 200) throw bounds;
      if (org.status !== 200) throw org;
      drawCaseMap(bounds.body, org.body, reports, more);
    }).catch(function (r) {
      document.getElementById("map-error").innerHTML = r && r.status ? errorBox(r.status, r.body) : errorBox(0, null);
    });
  }

  function drawCaseMap(collection, org, reports, more) {
    var names = {};
    (org.units || []).forEach(function (u) { names[u.id] = u.name; });
    var features = collection.features || [];
    var placed = reports.filter(function (r) { return r.lat !== null && r.long !== null; });
    var byGrid = {};
    reports.forEach(function (r) {
      var key = r.grid_id || "";
      var row = byGrid[key] || (byGrid[key] = { reports: 0, open: 0, placed: 0 });
      row.reports += 1;
      if (["closed", "merged", "unreasonable"].indexOf(r.status) < 0) row.open += 1;
      if (r.lat !== null && r.long !== null) row.placed += 1;
    });
    var el = document.getElementById("map-chart");
    el.setAttribute("data-points", String(placed.length));
    el.setAttribute("data-regions", String(features.length));
    document.getElementById("map-summary").textContent = t("map.summary", {
      n: reports.length, placed: placed.length, grids: features.length
    }) + (more ? t("overview.more", { n: reports.length }) : "");
    var colours = { received: "#d97706", accepted: "#1d5fbf", escalated: "#c23531", resolved: "#15803d", closed: "#6b7280" };
    var points = placed.map(function (r) {
      return { name: r.description, value: [r.long, r.lat], status: r.status, itemStyle: { color: colours[r.status] || "#5470c6" } };
    });
    var scatter = {
      type: "scatter", name: t("map.reports"), data: points, symbolSize: 12,
      tooltip: { formatter: function (p) { return esc(p.data.name) + "<br>" + esc(label("status", p.data.status)); } }
    };
    var option;
    if (features.length && window.echarts) {
      window.echarts.registerMap("baton-grids", collection);
      var counts = features.map(function (f) { return { name: f.id, value: (byGrid[f.id] || {}).reports || 0 }; });
      var top = Math.max.apply(null, counts.map(function (c) { return c.value; }).concat([1]));
      option = {
        animation: false,
        tooltip: { trigger: "item" },
        visualMap: { min: 0, max: top, left: 8, bottom: 8, text: [t("map.many"), t("map.few")], inRange: { color: ["#f5f6f7", "#f4b183", "#c23531"] }, seriesIndex: 0 },
        geo: { map: "baton-grids", nameProperty: "id", roam: true, itemStyle: { borderColor: "#646a73" } },
        series: [
          { type: "map", geoIndex: 0, name: t("map.by_grid"), data: counts,
            tooltip: { formatter: function (p) { return esc(names[p.name] || p.name) + ": " + esc(p.value || 0); } } },
          Object.assign(scatter, { coordinateSystem: "geo" })
        ]
      };
    } else {
      option = {  // no boundary drawn: the points on plain longitude/latitude axes
        animation: false, tooltip: { trigger: "item" },
        xAxis: { type: "value", scale: true, name: "E" }, yAxis: { type: "value", scale: true, name: "N" },
        series: [scatter]
      };
    }
    if (window.echarts) window.echarts.init(el).setOption(option);
    var rows = Object.keys(byGrid).sort().map(function (g) {
      var row = byGrid[g];
      return '<tr data-grid="' + esc(g) + '"><td>' + esc(g ? names[g] || g : t("map.no_grid")) + '</td><td class="num reports">' +
        esc(row.reports) + '</td><td class="num open">' + esc(row.open) + '</td><td class="num placed">' + esc(row.placed) + "</td></tr>";
    });
    document.getElementById("map-grids").innerHTML = rows.length ? table([t("map.grid"), t("map.reports"),
      t("map.open"), t("map.placed")], rows, "grids") : '<p class="empty">' + esc(t("reports.empty")) + "</p>";
  }

  function weekOf(iso) {
    // The Monday (Asia/Shanghai) of the week an instant falls in, as YYYY-MM-DD.
    var local = new Date(new Date(iso).getTime() + 8 * 3600 * 1000);
    var day = (local.getUTCDay() + 6) % 7;
    local.setUTCDate(local.getUTCDate() - day);
    return local.toISOString().slice(0, 10);
  }

  function trend(items) {
    var el = document.getElementById("trend-chart");
    if (!el || !window.echarts) return;
    var weeks = [], now = new Date();
    for (var i = 11; i >= 0; i--) weeks.push(weekOf(new Date(now.getTime() - i * 7 * 86400000).toISOString()));
    var blown = {}, closed = {};
    items.forEach(function (w) {
      var b = weekOf(w.blown_at);
      blown[b] = (blown[b] || 0) + 1;
      if (w.status === "closed") { var c = weekOf(w.updated_at); closed[c] = (closed[c] || 0) + 1; }
    });
    window.echarts.init(el).setOption({
      animation: false,
      grid: { left: 8, right: 16, top: 32, bottom: 8, containLabel: true },
      tooltip: { trigger: "axis" },
      legend: { data: [t("overview.blown"), t("overview.closed_week")] },
      xAxis: { type: "category", data: weeks.map(function (w) { return w.slice(5); }) },
      yAxis: { type: "value", minInterval: 1 },
      series: [
        { name: t("overview.blown"), type: "line", smooth: true, data: weeks.map(function (w) { return blown[w] || 0; }) },
        { name: t("overview.closed_week"), type: "bar", data: weeks.map(function (w) { return closed[w] || 0; }) }
      ]
    });
    el.setAttribute("data-weeks", JSON.stringify(weeks.map(function (w) { return [w, blown[w] || 0]; })));
  }

  // The audit page: one event's inclusion in the signed tree, checked by this browser (RFC 9162, WebCrypto) ------
  function b64bytes(text) {
    var raw = atob(text);
    var out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }
  function bytesb64(bytes) {
    var raw = "";
    for (var i = 0; i < bytes.length; i++) raw += String.fromCharCode(bytes[i]);
    return btoa(raw);
  }
  function sha256(prefix, parts) {
    var size = 1 + parts.reduce(function (n, p) { return n + p.length; }, 0);
    var all = new Uint8Array(size);
    all[0] = prefix;
    var at = 1;
    parts.forEach(function (p) { all.set(p, at); at += p.length; });
    return crypto.subtle.digest("SHA-256", all).then(function (d) { return new Uint8Array(d); });
  }
  function same(a, b) {
    if (a.length !== b.length) return false;
    for (var i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }
  function rootFromProof(leaf, index, size, proof) {
    // RFC 9162 2.1.3.2, as audit/merkle.py verify_inclusion does it.
    var fn = index, sn = size - 1, r = Promise.resolve(leaf);
    proof.forEach(function (p) {
      r = r.then(function (h) {
        if (sn === 0) throw new Error("proof too long");
        var next;
        if ((fn & 1) || fn === sn) {
          next = sha256(1, [p, h]);
          if (!(fn & 1)) { while (fn && !(fn & 1)) { fn >>= 1; sn >>= 1; } }
        } else {
          next = sha256(1, [h, p]);
        }
        fn >>= 1; sn >>= 1;
        return next;
      });
    });
    return r.then(function (h) { if (sn !== 0) throw new Error("proof too short"); return h; });
  }
  function audit() {
    var section = document.getElementById("audit");
    if (!section) return;
    var note = document.getElementById("checkpoint");
    fetch("/v1/audit/checkpoint", { headers: authHeaders(), credentials: "omit" }).then(function (r) {
      return r.text().then(function (text) {
        if (r.ok) { note.textContent = text; return; }
        var body = null;
        try { body = JSON.parse(text); } catch (e) { body = null; }
        document.getElementById("verdict").innerHTML = errorBox(r.status, body);
      });
    });
    var form = document.getElementById("verify");
    form.addEventListener("submit", function (evt) {
      evt.preventDefault();
      var position = document.getElementById("position").value;
      var verdict = document.getElementById("verdict");
      verdict.removeAttribute("data-verdict");
      verdict.textContent = "…";
      var headers = authHeaders();
      Promise.all([
        fetch("/v1/audit/events/" + encodeURIComponent(position), { headers: headers, credentials: "omit" }),
        api("/v1/audit/proof/" + encodeURIComponent(position))
      ]).then(function (answers) {
        var event = answers[0], proof = answers[1];
        if (!event.ok) return event.text().then(function (t) { verdict.innerHTML = errorBox(event.status, JSON.parse(t)); });
        if (proof.status !== 200) { verdict.innerHTML = errorBox(proof.status, proof.body); return null; }
        var p = proof.body;
        return event.arrayBuffer().then(function (buffer) {
          return sha256(0, [new Uint8Array(buffer)]);
        }).then(function (leaf) {
          if (!same(leaf, b64bytes(p.leaf_hash))) throw new Error(t("audit.leaf"));
          return rootFromProof(leaf, p.index, p.tree_size, p.proof.map(b64bytes));
        }).then(function (root) {
          if (!same(root, b64bytes(p.root))) throw new Error(t("audit.path"));
          var lines = String(p.checkpoint).split("\n");
          if (lines[2] !== bytesb64(root)) throw new Error(t("audit.note"));
          verdict.setAttribute("data-verdict", "ok");
          verdict.innerHTML = '<p class="ok">' + esc(t("audit.ok", { position: position, size: p.tree_size, root: lines[2] })) + "</p>";
        });
      }).catch(function (err) {
        verdict.setAttribute("data-verdict", "failed");
        verdict.innerHTML = '<p class="bad">' + esc(t("audit.failed", { reason: err.message })) + "</p>";
      });
    });
    if (document.getElementById("position").value) form.requestSubmit();
  }

  // Live: the read models' position, streamed (server-sent events over fetch, so the token stays in a header) ------
  function live() {
    var last = null;
    var pending = null;
    var decoder = new TextDecoder();
    function changed(position) {
      if (last !== null && position !== last && pending === null) {
        pending = setTimeout(function () {  // many events in a moment: the page reads once
          pending = null;
          if (window.htmx) window.htmx.trigger(document.body, "baton:changed");
          if (document.getElementById("overview")) overview();
          if (document.getElementById("casemap")) casemap();
        }, 150);
      }
      last = position;
      document.body.setAttribute("data-position", String(position));
    }
    function connect() {
      fetch("/v1/changes", { headers: Object.assign({ Accept: "text/event-stream" }, authHeaders()), credentials: "omit" })
        .then(function (r) {
          if (!r.ok || !r.body) return null;
          var reader = r.body.getReader();
          var buffer = "";
          function pump() {
            return reader.read().then(function (chunk) {
              if (chunk.done) return null;
              buffer += decoder.decode(chunk.value, { stream: true });
              var parts = buffer.split("\n\n");
              buffer = parts.pop();
              parts.forEach(function (part) {
                var data = part.split("\n").filter(function (l) { return l.indexOf("data: ") === 0; }).map(function (l) { return l.slice(6); });
                if (data.length) {
                  try { changed(JSON.parse(data.join("\n")).position); } catch (e) { /* a line we do not read */ }
                }
              });
              return pump();
            });
          }
          return pump();
        })
        .catch(function () { return null; })
        .then(function () { setTimeout(connect, 1000); });
    }
    connect();
  }

  // The demo's actors, offered only where `baton demo` filled the data dir (GET /demo/actors is [] elsewhere) -----
  function demoActors() {
    fetch("/demo/actors", { credentials: "omit" }).then(function (r) {
      if (!r.ok) return;
      return r.json().then(function (actors) {
        if (!actors.length) return;
        var list = document.getElementById("demo-actor-list");
        actors.forEach(function (actor) {
          var item = document.createElement("li");
          var button = document.createElement("button");
          button.type = "button";
          button.textContent = actor.label;
          button.setAttribute("data-role", actor.role);
          button.addEventListener("click", function () {
            sessionStorage.setItem(TOKEN_KEY, actor.token);
            location.assign("/?lang=" + encodeURIComponent(lang()));
          });
          item.appendChild(button);
          list.appendChild(item);
        });
        document.getElementById("demo-actors").hidden = false;
      });
    }).catch(function () { return null; });
  }

  // Sign-in, sign-out, who am I -----------------------------------------------------------------------------------
  function start() {
    var tok = token();
    var who = document.getElementById("whoami");
    var c = tok ? claims(tok) : null;
    if (c && who) {
      who.textContent = t("signin.as") + ": " + c.role + (c.unit ? " · " + c.unit : "");
      who.setAttribute("data-role", c.role);
      Array.prototype.forEach.call(document.querySelectorAll("nav a[data-roles]"), function (a) {
        a.hidden = a.getAttribute("data-roles").split(" ").indexOf(c.role) < 0;  // a courtesy: the API decides
      });
      document.getElementById("signin-link").hidden = true;
      document.getElementById("signout").hidden = false;
    }
    var signout = document.getElementById("signout");
    if (signout) signout.addEventListener("click", function () {
      sessionStorage.removeItem(TOKEN_KEY);
      location.assign("/signin?lang=" + encodeURIComponent(lang()));
    });
    var form = document.getElementById("signin");
    if (form) demoActors();
    if (form) {
      form.addEventListener("submit", function (evt) {
        evt.preventDefault();
        var value = document.getElementById("token").value.trim().replace(/^Bearer\s+/i, "");
        if (!claims(value)) { document.getElementById("signin-error").hidden = false; return; }
        sessionStorage.setItem(TOKEN_KEY, value);
        location.assign("/?lang=" + encodeURIComponent(lang()));
      });
    } else if (!tok) {
      location.replace("/signin?lang=" + encodeURIComponent(lang()));
      return;
    }
    overview();
    casemap();
    if (tok) audit();
    if (tok && !form) live();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
