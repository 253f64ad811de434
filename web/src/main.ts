// Messenger in the browser: wires the page (static markup in index.html) to the API, the
// broker link and the tab's store.
import type { IMessage } from "@stomp/stompjs";
import { ApiError, logIn, logOut, lookUp, signUp } from "./api";
import { TYPE_ANSWER, TYPE_MESSAGE, TYPE_RECEIPT_NOTICE } from "./generated/protocol";
import type { DeliveredMessage, ReceiptNotice, RelayAnswer } from "./generated/protocol";
import { randomId, stableId } from "./ids";
import { Link, type LinkState } from "./link";
import { bodyFits, checkText, displayNameError, passwordError, usernameError } from "./rules";
import { clearSession, loadSession, saveSession, type TabSession } from "./session";
import { Store, type Outgoing } from "./store";
import { $, input, MessageList, renderConversations, setConnection } from "./view";

// -- signing in ---------------------------------------------------------------------------

function showAuth(message = ""): void {
  $("chat").hidden = true;
  $("auth").hidden = false;
  $("auth-error").textContent = message;
  document.title = "Messenger";
  input("username").focus();
}

function setBusy(busy: boolean): void {
  for (const id of ["log-in", "sign-up"]) ($(id) as HTMLButtonElement).disabled = busy;
}

async function authenticate(mode: "login" | "signup"): Promise<void> {
  const username = input("username").value.trim();
  const password = input("password").value;
  const displayName = input("display-name").value.trim();
  const error = $("auth-error");
  if (mode === "signup") {
    const problem =
      usernameError(username) ??
      passwordError(password) ??
      (displayName ? displayNameError(displayName) : "Choose a display name: the name others see.");
    if (problem) {
      error.textContent = problem;
      return;
    }
  } else if (!username || !password) {
    error.textContent = "Enter your username and password.";
    return;
  }
  error.textContent = "";
  setBusy(true);
  try {
    if (mode === "signup") await signUp({ username, display_name: displayName, password });
    const answer = await logIn(username, password);
    const profile = mode === "signup" ? { display_name: displayName } : await lookUp(username);
    const session: TabSession = {
      username,
      display_name: profile?.display_name ?? username,
      token: answer.token,
      expires_at: answer.expires_at,
      ...(answer.device_queue ? { device_queue: answer.device_queue } : {}),
    };
    saveSession(session);
    input("password").value = "";
    startChat(session);
  } catch (caught) {
    error.textContent = caught instanceof ApiError ? caught.message : "Something went wrong; try again.";
  } finally {
    setBusy(false);
  }
}

$("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  void authenticate("login");
});
$("sign-up").addEventListener("click", () => void authenticate("signup"));

// -- chatting -----------------------------------------------------------------------------

/** Display names, looked up once each (GET /v1/users/{name}). */
class Names {
  private readonly known = new Map<string, string>();
  private readonly asked = new Set<string>();

  constructor(private readonly changed: () => void) {}

  set(username: string, displayName: string): void {
    this.known.set(username, displayName);
  }

  has(username: string): boolean {
    return this.known.has(username);
  }

  get = (username: string): string => {
    const name = this.known.get(username);
    if (name !== undefined) return name;
    if (!this.asked.has(username)) {
      this.asked.add(username);
      lookUp(username)
        .then((user) => {
          if (user) {
            this.known.set(username, user.display_name);
            this.changed();
          }
        })
        .catch(() => this.asked.delete(username)); // offline: ask again next time
    }
    return username;
  };
}

function startChat(session: TabSession): void {
  new Chat(session).start();
}

class Chat {
  private readonly store: Store;
  private readonly link: Link;
  private readonly names: Names;
  private readonly list: MessageList;
  private readonly composer = $("message") as HTMLTextAreaElement;
  private current: string | null = null;
  private readonly inFlight = new Set<string>(); // published on this connection, no receipt yet
  private renderTimer: number | undefined;
  private expiryTimer: number | undefined;
  private readonly draftKey: string;
  private drafts: Record<string, string>;
  private readonly controller = new AbortController();

  constructor(private readonly session: TabSession) {
    this.store = new Store(session.username);
    this.names = new Names(() => this.render());
    this.names.set(session.username, session.display_name);
    this.list = new MessageList($("messages"), session.username, this.names.get);
    this.draftKey = `messenger.drafts.${session.username}`;
    this.drafts = JSON.parse(sessionStorage.getItem(this.draftKey) ?? "{}") as Record<string, string>;
    this.link = new Link(session, {
      state: (state, reason) => this.onState(state, reason),
      connected: () => this.onConnected(),
      frame: (message) => this.onFrame(message),
      confirmed: (outgoing) => this.onConfirmed(outgoing),
    });
  }

  start(): void {
    $("auth").hidden = true;
    $("chat").hidden = false;
    $("me").textContent = `${this.session.display_name} (${this.session.username})`;
    setConnection("connecting");
    const signal = this.controller.signal;
    $("to-form").addEventListener("submit", (event) => {
      event.preventDefault();
      void this.openTo(input("to").value);
    }, { signal });
    input("to").addEventListener("input", () => ($("to-error").textContent = ""), { signal });
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    }, { signal });
    this.composer.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      }
    }, { signal });
    this.composer.addEventListener("input", () => this.keepDraft(), { signal });
    $("log-out").addEventListener("click", () => void this.logOut(), { signal });
    addEventListener("hashchange", () => void this.fromHash(), { signal });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && this.current) {
        this.store.open(this.current);
        this.render();
      }
    }, { signal });
    const left = Date.parse(this.session.expires_at) - Date.now();
    this.expiryTimer = window.setTimeout(() => void this.end("Your session expired; log in again."),
      Math.min(left, 2 ** 31 - 1));
    this.renderNow();
    void this.fromHash();
    this.link.start();
  }

  // -- broker events --

  private onState(state: LinkState, reason?: string): void {
    if (state !== "online") this.inFlight.clear();
    setConnection(state, reason);
  }

  private onConnected(): void {
    this.inFlight.clear();
    this.flush();
  }

  private onFrame(message: IMessage): void {
    try {
      const body: unknown = JSON.parse(message.body);
      const type = message.headers.type ?? TYPE_MESSAGE; // as the CLI reads an untyped one
      if (type === TYPE_MESSAGE && isDelivered(body)) this.onDelivered(body);
      else if (type === TYPE_RECEIPT_NOTICE && isNotice(body)) this.onNotice(body);
      else if (type === TYPE_ANSWER && isAnswer(body)) this.onAnswer(body);
    } catch {
      // unreadable: skipped, as the CLI skips it
    }
    try {
      message.ack(); // after the store has it: a tab that dies first gets it again
    } catch {
      // the connection went: the broker hands it out again, and the store dedupes by id
    }
  }

  private onDelivered(message: DeliveredMessage): void {
    const peer = this.store.peerOf(message);
    const viewing = peer === this.current && !document.hidden;
    if (this.store.receive(message, viewing) === "new" && message.from !== this.session.username) {
      this.store.queueReceipt(message.id, message.from, randomId(), Date.now());
      this.flush();
    }
    this.render();
  }

  private onNotice(notice: ReceiptNotice): void {
    if (this.store.receipt(notice)) this.render();
  }

  private onAnswer(answer: RelayAnswer): void {
    if (!answer.client_id) return;
    if (answer.status === "rejected") this.store.fail(answer.client_id, answer.detail ?? answer.reason ?? "refused");
    else this.store.settle(answer.client_id);
    this.render();
  }

  private onConfirmed(outgoing: Outgoing): void {
    this.inFlight.delete(outgoing.client_id);
    this.store.settle(outgoing.client_id);
    this.render();
  }

  /** Publish everything the broker has not confirmed, once per connection. */
  private flush(): void {
    for (const outgoing of this.store.outgoing) {
      if (this.inFlight.has(outgoing.client_id)) continue;
      if (!this.link.publish(outgoing)) return;
      this.inFlight.add(outgoing.client_id);
    }
  }

  // -- user actions --

  private send(): void {
    const peer = this.current;
    const error = $("composer-error");
    if (!peer) return;
    const checked = checkText(this.composer.value);
    if ("error" in checked) {
      error.textContent = checked.error;
      return;
    }
    if (!bodyFits(JSON.stringify({ to: peer, text: checked.text }))) {
      error.textContent = "This message is too long to send.";
      return;
    }
    error.textContent = "";
    const clientId = randomId();
    const sentMs = Date.now();
    this.store.send(peer, checked.text, stableId(this.session.username, clientId, sentMs), clientId, sentMs);
    this.composer.value = "";
    this.keepDraft();
    this.renderNow();
    this.flush();
  }

  private async openTo(raw: string): Promise<void> {
    const name = raw.trim().toLowerCase();
    const error = $("to-error");
    if (!name) return;
    const problem = usernameError(name);
    if (problem) {
      error.textContent = problem;
      return;
    }
    if (!(await this.exists(name))) return;
    input("to").value = "";
    if (location.hash === `#${name}`) this.select(name);
    else location.hash = name;
  }

  /** Whether `name` is a user; says why not in the To field's error line. */
  private async exists(name: string): Promise<boolean> {
    if (this.names.has(name) || this.store.messages(name).length) return true;
    const error = $("to-error");
    try {
      const user = await lookUp(name);
      if (!user) {
        error.textContent = `There is no user named '${name}'.`;
        return false;
      }
      this.names.set(user.username, user.display_name);
      return true;
    } catch (caught) {
      error.textContent = caught instanceof ApiError ? caught.message : "Cannot look that user up now.";
      return false;
    }
  }

  private async fromHash(): Promise<void> {
    const name = decodeURIComponent(location.hash.slice(1));
    if (!name || usernameError(name) || name === this.current) return;
    if (await this.exists(name)) this.select(name);
  }

  private select(peer: string): void {
    this.current = peer;
    this.store.open(peer);
    $("peer").textContent = `${this.names.get(peer)} (${peer})`;
    $("composer").hidden = false;
    $("composer-error").textContent = "";
    this.composer.value = this.drafts[peer] ?? "";
    this.renderNow();
    this.composer.focus();
  }

  private keepDraft(): void {
    if (!this.current) return;
    if (this.composer.value) this.drafts[this.current] = this.composer.value;
    else delete this.drafts[this.current];
    sessionStorage.setItem(this.draftKey, JSON.stringify(this.drafts));
  }

  private async logOut(): Promise<void> {
    let note = "";
    try {
      await logOut(this.session.token);
    } catch (caught) {
      if (!(caught instanceof ApiError) || caught.status !== 401) {
        note = "Logged out of this tab. The server could not be told; the session ends by itself when it expires.";
      }
    }
    await this.end(note);
  }

  /** Leave: close the link, forget this tab's session and what it kept. */
  private async end(message: string): Promise<void> {
    this.controller.abort();
    window.clearTimeout(this.renderTimer);
    window.clearTimeout(this.expiryTimer);
    await this.link.stop();
    this.store.clear();
    sessionStorage.removeItem(this.draftKey);
    clearSession();
    $("messages").replaceChildren();
    $("conversations").replaceChildren();
    $("composer").hidden = true;
    $("peer").textContent = "";
    history.replaceState(null, "", location.pathname);
    showAuth(message);
  }

  // -- drawing --

  /** Coalesce bursts (a backlog arriving after a reconnect) into one redraw. */
  private render(): void {
    if (this.renderTimer === undefined) this.renderTimer = window.setTimeout(() => this.renderNow(), 16);
  }

  private renderNow(): void {
    window.clearTimeout(this.renderTimer);
    this.renderTimer = undefined;
    const conversations = this.store.conversations();
    renderConversations($("conversations"), conversations, this.current, this.session.username, this.names.get);
    if (this.current) {
      $("peer").textContent = `${this.names.get(this.current)} (${this.current})`;
      this.list.render(this.current, this.store.messages(this.current));
    }
    const unread = conversations.reduce((sum, c) => sum + c.unread, 0);
    document.title = unread ? `(${unread}) Messenger` : "Messenger";
  }
}

// -- shapes of what arrives (the broker checked the sender; the rest is checked here) --

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

const strings = (value: Record<string, unknown>, ...keys: string[]): boolean =>
  keys.every((key) => typeof value[key] === "string");

function isDelivered(value: unknown): value is DeliveredMessage {
  return isObject(value) && strings(value, "id", "from", "to", "text", "sent_at");
}

function isNotice(value: unknown): value is ReceiptNotice {
  return isObject(value) && strings(value, "message_id", "reader", "status", "at");
}

function isAnswer(value: unknown): value is RelayAnswer {
  return isObject(value) && (value.status === "accepted" || value.status === "rejected");
}

// -- start --

const saved = loadSession();
if (saved) startChat(saved);
else showAuth();
performance.mark("messenger-interactive");
