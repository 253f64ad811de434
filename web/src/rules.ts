// The CLI's validation rules, from the generated copy of protocol/ (web/protocol_gen.py):
// the browser says what is wrong before anything is sent; the server checks again.
import {
  DISPLAY_NAME_FORBIDDEN_CATEGORIES,
  DISPLAY_NAME_MAX,
  MAX_BODY_BYTES,
  MAX_TEXT_CHARS,
  PASSWORD_MAX,
  PASSWORD_MIN,
  RESERVED_USERNAMES,
  TEXT_FORBIDDEN_CLASS,
  USERNAME_MAX,
  USERNAME_MIN,
  USERNAME_PATTERN,
} from "./generated/protocol";

const usernamePattern = new RegExp(USERNAME_PATTERN);
const reserved: ReadonlySet<string> = new Set(RESERVED_USERNAMES);
// Unicode-property patterns are compiled on first use, not while the page starts.
let forbiddenInName: RegExp | undefined;
let forbiddenInText: RegExp | undefined;

/** Length in code points, as Python counts it. */
function length(value: string): number {
  let n = 0;
  for (const _ of value) n++;
  return n;
}

/** Why `value` is not a legal username, or null when it is. */
export function usernameError(value: string): string | null {
  const n = length(value);
  if (n < USERNAME_MIN || n > USERNAME_MAX) {
    return `A username is ${USERNAME_MIN} to ${USERNAME_MAX} characters long.`;
  }
  if (value !== value.toLowerCase()) return "A username is lowercase.";
  if (!usernamePattern.test(value)) {
    return "A username holds only a-z, 0-9, '_', '.', '-' and starts with a letter or digit.";
  }
  if (reserved.has(value)) return `The username '${value}' is reserved.`;
  return null;
}

export function displayNameError(value: string): string | null {
  const n = length(value);
  if (n < 1 || n > DISPLAY_NAME_MAX) return `A display name is 1 to ${DISPLAY_NAME_MAX} characters long.`;
  forbiddenInName ??= new RegExp(
    `[${DISPLAY_NAME_FORBIDDEN_CATEGORIES.map((c) => `\\p{${c}}`).join("")}]`,
    "u",
  );
  const bad = forbiddenInName.exec(value);
  if (bad) return `A display name cannot hold the character U+${codePoint(bad[0])}.`;
  if (!value.trim()) return "A display name cannot be blank.";
  return null;
}

export function passwordError(value: string): string | null {
  const n = length(value);
  if (n < PASSWORD_MIN) return `A password is at least ${PASSWORD_MIN} characters long.`;
  if (n > PASSWORD_MAX) return `A password is at most ${PASSWORD_MAX} characters long.`;
  return null;
}

/** The text as it will be sent (trimmed, as the relay trims it), or why it cannot be. */
export function checkText(value: string): { text: string } | { error: string } {
  const text = value.trim();
  if (!text) return { error: "Write something first." };
  if (length(text) > MAX_TEXT_CHARS) {
    return { error: `A message is at most ${MAX_TEXT_CHARS.toLocaleString()} characters long.` };
  }
  forbiddenInText ??= new RegExp(TEXT_FORBIDDEN_CLASS, "u");
  const bad = forbiddenInText.exec(text);
  if (bad) return { error: `A message cannot hold the control character U+${codePoint(bad[0])}.` };
  return { text };
}

/** The JSON body of a send, if it fits the broker-side limit. */
export function bodyFits(body: string): boolean {
  return new TextEncoder().encode(body).length <= MAX_BODY_BYTES;
}

function codePoint(char: string): string {
  return (char.codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, "0");
}
