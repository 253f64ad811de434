// `npm run build`: type-checked sources (tsc --noEmit runs first) bundled into dist/ by
// esbuild: one minified ES module, one stylesheet, an icon, each named by its content hash
// (served with a year-long cache), and index.html pointing at them (served revalidated).
// `make web` runs this and then stamps dist/build-info.json (web/bundle.py).
import * as esbuild from "esbuild";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { basename } from "node:path";

// Built aside and swapped in at the end: a failed build leaves the last good one in place.
const dist = "dist.tmp";
rmSync(dist, { recursive: true, force: true });
mkdirSync(`${dist}/assets`, { recursive: true });

const result = await esbuild.build({
  entryPoints: { app: "src/main.ts", style: "src/style.css" },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2020", "chrome100", "firefox100", "safari15"],
  outdir: `${dist}/assets`,
  entryNames: "[name]-[hash]",
  assetNames: "[name]-[hash]",
  loader: { ".svg": "file" },
  metafile: true,
  legalComments: "none",
  charset: "utf8",
  logLevel: "warning",
});

const outputs = Object.keys(result.metafile.outputs).map((path) => basename(path));
const pick = (prefix, ext) => {
  const name = outputs.find((n) => n.startsWith(prefix) && n.endsWith(ext));
  if (!name) throw new Error(`no ${prefix}*${ext} in the build output`);
  return name;
};

// The icon: content-hashed like the rest.
const icon = readFileSync("src/icon.svg");
const iconName = `icon-${createHash("sha256").update(icon).digest("hex").slice(0, 8).toUpperCase()}.svg`;
writeFileSync(`${dist}/assets/${iconName}`, icon);

const names = { js: pick("app-", ".js"), css: pick("style-", ".css"), icon: iconName };
const html = readFileSync("src/index.html", "utf8").replace(/\{\{(\w+)\}\}/g, (_, key) => {
  if (!(key in names)) throw new Error(`index.html names an unknown asset {{${key}}}`);
  return names[key];
});
writeFileSync(`${dist}/index.html`, html);
rmSync("dist", { recursive: true, force: true });
renameSync(dist, "dist");
console.log(`built dist/: ${Object.values(names).join(", ")}`);
