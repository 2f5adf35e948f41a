// Runs a link page's own script (as the gateway served it) against a small fake browser, and
// prints what happened as JSON: what the page POSTed, what it showed, what it kept, where the
// address bar ended up. Used by test_link_page_scripts.py; needs only Node.js.
//
// stdin: {html, url, storage?, localStorage?, storageRefuses?, answers: [{status, body} | "network"], steps}
// steps: {fill: id, value} | {click: id} | {submit: id}
// The fake keeps what the scripts depend on: elements by id with their ancestors (a disabled
// fieldset disables what it holds, a disabled control takes no click), checkbox change events,
// a submit button submitting its form after the browser's own check of required fields (a
// required field that is hidden or empty blocks the submission), sessionStorage, history.
"use strict";
const vm = require("node:vm");

const VOID = new Set(["input", "meta", "br", "img", "link", "hr"]);

function parse(html) {
  const elements = [];
  const byId = new Map();
  const stack = [];
  const tag = /<(\/?)([a-zA-Z][a-zA-Z0-9]*)\b([^>]*)>([^<]*)/g;
  let m;
  while ((m = tag.exec(html)) !== null) {
    const [, closing, rawName, rawAttrs, text] = m;
    const name = rawName.toLowerCase();
    if (closing) {
      while (stack.length && stack.pop().tagName !== name) { /* unwind */ }
      continue;
    }
    const attributes = {};
    const attr = /([a-zA-Z-]+)(?:="([^"]*)")?/g;
    let a;
    while ((a = attr.exec(rawAttrs)) !== null) { attributes[a[1]] = a[2] === undefined ? "" : a[2]; }
    const element = makeElement(name, attributes, stack.length ? stack[stack.length - 1] : null);
    element.textContent = text;
    elements.push(element);
    if (attributes.id) { byId.set(attributes.id, element); }
    if (!VOID.has(name) && name !== "script" && name !== "style") { stack.push(element); }
  }
  return {elements, byId};
}

function makeElement(tagName, attributes, parent) {
  const listeners = {};
  return {
    tagName, parent, attributes, listeners,
    id: attributes.id || "",
    type: attributes.type || (tagName === "button" ? "submit" : "text"),
    hidden: "hidden" in attributes,
    disabled: "disabled" in attributes,
    required: "required" in attributes,
    checked: "checked" in attributes,
    value: "",
    addEventListener(type, fn) { (listeners[type] = listeners[type] || []).push(fn); },
    setAttribute(k, v) { attributes[k] = String(v); },
    getAttribute(k) { return k in attributes ? attributes[k] : null; },
    focus() { state.focused = this.id; },
  };
}

function ancestors(element) {
  const chain = [];
  for (let e = element; e !== null; e = e.parent) { chain.push(e); }
  return chain;
}
const inactive = (e) => ancestors(e).some((x) => x.disabled && (x === e || x.tagName === "fieldset"));
const unseen = (e) => ancestors(e).some((x) => x.hidden);

function dispatch(element, type, event) {
  for (const fn of element.listeners[type] || []) { fn(event); }
}

const state = {focused: null, fetches: [], history: [], submits: [], refused: []};

async function main() {
  const input = JSON.parse(require("node:fs").readFileSync(0, "utf8"));
  // The markup without the script's text, which is code, not markup.
  const {elements, byId} = parse(input.html.replace(/(<script[^>]*>)[\s\S]*?(<\/script>)/, "$1$2"));
  const scripts = elements.filter((e) => e.tagName === "script");
  if (scripts.length !== 1) { throw new Error("expected one script"); }
  const source = input.html.split(/<script[^>]*>/)[1].split("</script>")[0];

  const url = new URL(input.url, "http://gateway.test");
  const location = {pathname: url.pathname, search: url.search};
  const storage = new Map(Object.entries(input.storage || {}));
  const local = new Map(Object.entries(input.localStorage || {}));
  const answers = input.answers.slice();

  const window = {
    location,
    history: {
      replaceState(_state, _title, next) {
        const to = new URL(next, "http://gateway.test");
        location.pathname = to.pathname;
        location.search = to.search;
        state.history.push(next);
      },
    },
    sessionStorage: {
      getItem: (k) => (storage.has(k) ? storage.get(k) : null),
      setItem: (k, v) => {
        if (input.storageRefuses) { throw new Error("QuotaExceededError"); }
        storage.set(k, String(v));
      },
      removeItem: (k) => { storage.delete(k); },
    },
    localStorage: {
      getItem: (k) => (local.has(k) ? local.get(k) : null),
      setItem: (k, v) => { local.set(k, String(v)); },
      removeItem: (k) => { local.delete(k); },
    },
  };
  const document = {getElementById: (id) => byId.get(id) || null};
  function fetch(path, options) {
    state.fetches.push({path, options: JSON.parse(JSON.stringify(options)), at: location.search});
    const answer = answers.shift();
    if (answer === undefined) { throw new Error("the page fetched more than the test answers"); }
    if (answer === "network") { return Promise.reject(new TypeError("Failed to fetch")); }
    return Promise.resolve({
      status: answer.status,
      ok: answer.status >= 200 && answer.status < 300,
      json: () => (answer.body === null ? Promise.reject(new SyntaxError("no body"))
        : Promise.resolve(answer.body)),
    });
  }
  const context = vm.createContext({window, document, fetch, URLSearchParams, JSON});
  vm.runInContext(source, context);
  const settle = () => new Promise((resolve) => setImmediate(resolve));
  await settle();

  for (const step of input.steps) {
    const element = byId.get(step.fill || step.click || step.submit);
    if (!element) { throw new Error("no element " + JSON.stringify(step)); }
    if (step.fill !== undefined) {
      element.value = step.value;
    } else if (inactive(element) || unseen(element)) {
      state.refused.push(element.id);  // a person cannot press what is disabled or hidden
    } else if (step.click !== undefined && element.type === "checkbox") {
      element.checked = !element.checked;
      dispatch(element, "click", {});
      dispatch(element, "change", {});
    } else if (step.click !== undefined && element.type !== "submit") {
      dispatch(element, "click", {});
    } else {
      const form = ancestors(element).find((e) => e.tagName === "form");
      const fields = elements.filter((e) => e.tagName === "input" && ancestors(e).includes(form));
      const invalid = fields.filter((e) => e.required && !inactive(e) && (unseen(e) || !e.value));
      if (invalid.length) {
        state.refused.push(invalid.map((e) => e.id).join(","));
      } else {
        const event = {defaultPrevented: false, preventDefault() { this.defaultPrevented = true; }};
        dispatch(form, "submit", event);
        state.submits.push({defaultPrevented: event.defaultPrevented});
      }
    }
    for (let i = 0; i < 5; i += 1) { await settle(); }
  }

  const snapshot = {};
  for (const [id, e] of byId) {
    snapshot[id] = {
      text: e.textContent, disabled: e.disabled, inactive: inactive(e), hidden: e.hidden,
      unseen: unseen(e), required: e.required, value: e.value, attributes: e.attributes,
    };
  }
  process.stdout.write(JSON.stringify({
    ...state, elements: snapshot, storage: Object.fromEntries(storage),
    localStorage: Object.fromEntries(local),
    location: location.pathname + location.search, unanswered: answers.length,
  }));
}

main().catch((error) => { process.stderr.write(String(error && error.stack || error)); process.exit(1); });
