// Run with `node --test` in clients/js: the same vectors as the Python client (tests/vectors/signing.json).
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";

import { ImageUrls, sign, signature } from "../imgproxy.mjs";

const vectors = JSON.parse(await readFile(new URL("../../../tests/vectors/signing.json", import.meta.url), "utf8"));

for (const vector of vectors.cases) {
  test(`target and signature: ${vector.target}`, async () => {
    const now = (vector.expires ?? 0) * 1000;
    const expiresIn = vector.expires === undefined ? null : 0;
    const unsigned = await new ImageUrls().target(vector.path, vector.options, { expiresIn, now });
    assert.equal(unsigned, vector.expires === undefined ? vector.target : vector.target);
    const signed = await new ImageUrls({ key: vectors.key }).target(vector.path, vector.options, { expiresIn, now });
    assert.equal(signed, vector.signed);
  });
}

test("sign() appends expires before signing", async () => {
  const signed = await sign("/img/x.jpg?w=10", vectors.key, 1893456000);
  const expected = vectors.cases.find((c) => c.expires === 1893456000).signed;
  assert.equal(signed, expected);
});

test("signature() is unpadded base64url", async () => {
  const s = await signature(vectors.key, "/img/chelsea.png?w=100");
  assert.match(s, /^[A-Za-z0-9_-]{43}$/);
});

test("url() prefixes the base without doubling slashes", async () => {
  const urls = new ImageUrls({ base: "https://img.example.com/" });
  assert.equal(await urls.url("chelsea.png", { w: 100 }), "https://img.example.com/img/chelsea.png?w=100");
});

test("srcset() lists one signed candidate per width", async () => {
  const urls = new ImageUrls({ key: vectors.key });
  const srcset = await urls.srcset("chelsea.png", [100, 200], { fm: "webp" });
  const parts = srcset.split(", ");
  assert.equal(parts.length, 2);
  assert.match(parts[0], /^\/img\/chelsea\.png\?fm=webp&w=100&s=[A-Za-z0-9_-]{43} 100w$/);
  assert.match(parts[1], / 200w$/);
});
