// Message ids as both ends compute them (protocol/ids.py): the relay stamps a message sent
// with a client id and a send time with an id derived from them, so the browser knows the
// server id of what it sent before any answer, matches delivered receipts to it, and a
// message sent twice (its broker receipt was lost with the connection) is shown once.
import { STABLE_ID_RANDOM_BITS } from "./generated/protocol";

const K = new Uint32Array(64);
const H0 = new Uint32Array(8);
{
  // SHA-256's constants: the fractional parts of the square and cube roots of the primes.
  let found = 0;
  for (let n = 2; found < 64; n++) {
    let prime = true;
    for (let d = 2; d * d <= n; d++) if (n % d === 0) prime = false;
    if (!prime) continue;
    if (found < 8) H0[found] = ((Math.sqrt(n) % 1) * 2 ** 32) >>> 0;
    K[found] = ((Math.cbrt(n) % 1) * 2 ** 32) >>> 0;
    found++;
  }
}

const rotr = (x: number, n: number): number => (x >>> n) | (x << (32 - n));

/** SHA-256 of `data` (crypto.subtle exists only in secure contexts, and is asynchronous). */
export function sha256(data: Uint8Array): Uint8Array {
  const blocks = new Uint8Array(((data.length + 9 + 63) >> 6) << 6);
  blocks.set(data);
  blocks[data.length] = 0x80;
  const view = new DataView(blocks.buffer);
  view.setUint32(blocks.length - 8, Math.floor(data.length / 2 ** 29));
  view.setUint32(blocks.length - 4, (data.length << 3) >>> 0);
  const h = H0.slice();
  const w = new Uint32Array(64);
  for (let offset = 0; offset < blocks.length; offset += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(offset + i * 4);
    for (let i = 16; i < 64; i++) {
      const a = w[i - 15]!;
      const b = w[i - 2]!;
      const s0 = rotr(a, 7) ^ rotr(a, 18) ^ (a >>> 3);
      const s1 = rotr(b, 17) ^ rotr(b, 19) ^ (b >>> 10);
      w[i] = (w[i - 16]! + s0 + w[i - 7]! + s1) | 0;
    }
    let [a, b, c, d, e, f, g, hh] = h as unknown as number[] as [
      number, number, number, number, number, number, number, number,
    ];
    for (let i = 0; i < 64; i++) {
      const t1 = (hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i]! + w[i]!) | 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      hh = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h[0]! += a;
    h[1]! += b;
    h[2]! += c;
    h[3]! += d;
    h[4]! += e;
    h[5]! += f;
    h[6]! += g;
    h[7]! += hh;
  }
  const out = new Uint8Array(32);
  const outView = new DataView(out.buffer);
  h.forEach((word, i) => outView.setUint32(i * 4, word));
  return out;
}

/** The server id of a message `sender` sent with `clientId` at `clientMs` (RFC 9562
 * UUIDv8 laid out like v7), exactly as protocol/ids.py `stable_id` computes it. */
export function stableId(sender: string, clientId: string, clientMs: number): string {
  const digest = sha256(new TextEncoder().encode(`${sender}\0${clientId}`));
  let bits = 0n;
  for (let i = 0; i < 10; i++) bits = (bits << 8n) | BigInt(digest[i]!);
  bits >>= BigInt(80 - STABLE_ID_RANDOM_BITS);
  const randA = bits >> 62n;
  const randB = bits & ((1n << 62n) - 1n);
  const ms = BigInt(clientMs) & ((1n << 48n) - 1n);
  const value = (ms << 80n) | (0x8n << 76n) | (randA << 64n) | (0b10n << 62n) | randB;
  const hex = value.toString(16).padStart(32, "0");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A random UUIDv4 (crypto.randomUUID needs a secure context; getRandomValues does not). */
export function randomId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
