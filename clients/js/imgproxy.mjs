// imgproxy URL builder for browsers and Node 18+: options, HMAC-SHA256 signing (Web Crypto), srcset.
// No dependencies. Sign on a server (or at build time): a signing key must never ship to browsers.
//
//   import { ImageUrls } from "./imgproxy.mjs";
//   const urls = new ImageUrls({ base: "https://img.example.com", key: process.env.IMGPROXY_KEY });
//   await urls.url("cats/tom.jpg", { w: 300, fit: "cover", fm: "webp" });
//   await urls.srcset("cats/tom.jpg", [320, 640, 1280], { q: 70 });

const encoder = new TextEncoder();

function base64url(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// Percent-encode like the service's Python client: every byte but unreserved characters and "/".
function encodePath(path) {
  return path
    .replace(/^\/+/, "")
    .split("/")
    .map((part) => encodeURIComponent(part).replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase()))
    .join("/");
}

// application/x-www-form-urlencoded as Python's urlencode(safe=","): spaces become "+".
function encodeValue(value) {
  return encodeURIComponent(value)
    .replace(/[!'()*~]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase())
    .replace(/%20/g, "+")
    .replace(/%2C/g, ",");
}

function text(value) {
  if (typeof value === "boolean") return value ? "1" : "0";
  return String(value);
}

export async function signature(key, message) {
  const cryptoKey = await crypto.subtle.importKey(
    "raw", encoder.encode(key), { name: "HMAC", hash: "SHA-256" }, false, ["sign"],
  );
  return base64url(new Uint8Array(await crypto.subtle.sign("HMAC", cryptoKey, encoder.encode(message))));
}

// Append `expires` (if given) and the signature to a request target such as "/img/cat.jpg?w=300".
export async function sign(target, key, expires) {
  if (expires !== undefined && expires !== null) target += (target.includes("?") ? "&" : "?") + `expires=${expires}`;
  return target + (target.includes("?") ? "&" : "?") + "s=" + (await signature(key, target));
}

export class ImageUrls {
  constructor({ base = "", key = null } = {}) {
    this.base = base.replace(/\/+$/, "");
    this.key = key;
  }

  // The request target (/img/...?...), signed when a key is set. Options keep their order; a preset first.
  async target(path, options = {}, { expiresIn = null, now = Date.now() } = {}) {
    const entries = Object.entries(options).filter(([, value]) => value !== undefined && value !== null);
    entries.sort(([a], [b]) => (a === "preset" ? -1 : b === "preset" ? 1 : 0));
    let target = "/img/" + encodePath(path);
    if (entries.length) target += "?" + entries.map(([name, value]) => `${name}=${encodeValue(text(value))}`).join("&");
    const expires = expiresIn === null ? null : Math.floor(now / 1000) + expiresIn;
    if (this.key) return sign(target, this.key, expires);
    if (expires !== null) target += (target.includes("?") ? "&" : "?") + `expires=${expires}`;
    return target;
  }

  async url(path, options = {}, extra = {}) {
    return this.base + (await this.target(path, options, extra));
  }

  async srcset(path, widths, options = {}, extra = {}) {
    const parts = await Promise.all(widths.map(async (w) => `${await this.url(path, { ...options, w }, extra)} ${w}w`));
    return parts.join(", ");
  }
}
