// The session of this tab. A tab is a device: its token lives in sessionStorage, which
// survives a reload of the tab but is never shared with other tabs, never written to disk
// for later (localStorage would be), and never appears in a URL or a log.
import { INBOX_PREFIX } from "./generated/protocol";

export interface TabSession {
  username: string;
  display_name: string;
  token: string;
  expires_at: string;
  /** The broker queue this device reads, when the server names one (issue 13). */
  device_queue?: string;
}

const KEY = "messenger.session";

export function loadSession(): TabSession | null {
  try {
    const raw = sessionStorage.getItem(KEY);
    if (!raw) return null;
    const session = JSON.parse(raw) as TabSession;
    if (typeof session.token !== "string" || typeof session.username !== "string") return null;
    if (Date.parse(session.expires_at) <= Date.now()) {
      clearSession();
      return null;
    }
    return session;
  } catch {
    return null;
  }
}

export function saveSession(session: TabSession): void {
  sessionStorage.setItem(KEY, JSON.stringify(session));
}

export function clearSession(): void {
  sessionStorage.removeItem(KEY);
}

/** The one place that says which queue this tab consumes: the device queue the login
 * returned, or (before per-device queues exist) the user's inbox. */
export function queueOf(session: TabSession): string {
  return session.device_queue ?? `${INBOX_PREFIX}${session.username}`;
}
