// The DOM. Message data only ever becomes text (textContent, text nodes, attribute values
// set one by one): no HTML is built from anything a user typed. The page's CSP forbids
// inline script and, with Trusted Types, any string-to-HTML sink at all.
import type { Status, Message, ConversationSummary } from "./store";
import type { LinkState } from "./link";

export function $(id: string): HTMLElement {
  const element = document.getElementById(id);
  if (!element) throw new Error(`#${id} is missing from the page`);
  return element;
}

export const input = (id: string): HTMLInputElement => $(id) as HTMLInputElement;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

const MARKS: Record<Status, [string, string]> = {
  sending: ["🕓", "sending"],
  accepted: ["✓", "accepted"],
  delivered: ["✓✓", "delivered"],
  read: ["✓✓", "read"],
  failed: ["!", "not sent"],
};

/** Date formats of the browser's locale and zone, made on first use (not while the page
 * starts: a formatter costs milliseconds to build). */
const formats = new Map<string, Intl.DateTimeFormat>();
function format(options: Intl.DateTimeFormatOptions, date: Date): string {
  const key = JSON.stringify(options);
  let formatter = formats.get(key);
  if (!formatter) formats.set(key, (formatter = new Intl.DateTimeFormat(undefined, options)));
  return formatter.format(date);
}

/** A time in the browser's own zone: the hour today, the day and hour before. */
export function shortTime(at: number): string {
  const date = new Date(at);
  const today = date.toDateString() === new Date().toDateString();
  return format(
    today
      ? { hour: "2-digit", minute: "2-digit" }
      : { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" },
    date,
  );
}

export function setConnection(state: LinkState, reason?: string): void {
  const status = $("connection");
  status.dataset.state = state;
  status.textContent =
    state === "online" ? "Online" : state === "connecting" ? "Connecting…" : "Offline — reconnecting…";
  status.title = reason ? `The server said: ${reason}` : "";
}

/** The messages of one conversation, reusing the element of every message already shown. */
export class MessageList {
  private readonly elements = new Map<string, HTMLElement>();
  private peer: string | null = null;

  constructor(
    private readonly container: HTMLElement,
    private readonly me: string,
    private readonly name: (username: string) => string,
  ) {}

  render(peer: string, messages: readonly Message[]): void {
    if (peer !== this.peer) {
      this.elements.clear();
      this.peer = peer;
    }
    const box = this.container;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const wanted = new Set<string>();
    const nodes = messages.map((message) => {
      wanted.add(message.id);
      let article = this.elements.get(message.id);
      if (!article) {
        article = this.create(message);
        this.elements.set(message.id, article);
      }
      this.update(article, message);
      return article;
    });
    for (const id of this.elements.keys()) if (!wanted.has(id)) this.elements.delete(id);
    box.replaceChildren(...nodes);
    if (atBottom || messages.at(-1)?.from === this.me) box.scrollTop = box.scrollHeight;
  }

  private create(message: Message): HTMLElement {
    const article = el("article", message.from === this.me ? "message mine" : "message");
    const header = el("header");
    header.append(el("span", "sender"), " ", el("time"));
    article.append(header, el("p", "text", message.text));
    if (message.from === this.me) article.append(el("span", "status"));
    return article;
  }

  private update(article: HTMLElement, message: Message): void {
    (article.querySelector(".sender") as HTMLElement).textContent = this.name(message.from);
    const time = article.querySelector("time") as HTMLTimeElement;
    time.dateTime = message.sent_at;
    time.textContent = shortTime(message.at);
    time.title = format({ dateStyle: "full", timeStyle: "long" }, new Date(message.at));
    const status = article.querySelector(".status") as HTMLElement | null;
    if (status && message.status) {
      const [mark, label] = MARKS[message.status];
      status.textContent = mark;
      status.dataset.status = message.status;
      status.title = message.detail ? `${label}: ${message.detail}` : label;
      status.setAttribute("aria-label", status.title);
    }
  }
}

export function renderConversations(
  list: HTMLElement,
  conversations: ConversationSummary[],
  current: string | null,
  me: string,
  name: (username: string) => string,
): void {
  list.replaceChildren(
    ...conversations.map(({ peer, last, unread }) => {
      const link = el("a", "conversation-link");
      link.href = `#${encodeURIComponent(peer)}`;
      if (peer === current) link.setAttribute("aria-current", "page");
      const top = el("span", "line");
      top.append(el("span", "name", name(peer)));
      if (last) top.append(el("span", "when", shortTime(last.at)));
      const bottom = el("span", "line");
      const preview = last ? `${last.from === me ? "You: " : ""}${last.text}` : "No messages yet";
      bottom.append(el("span", "preview", preview.replace(/\s+/g, " ")));
      if (unread > 0) {
        const badge = el("span", "unread", String(unread));
        badge.setAttribute("aria-label", `${unread} unread`);
        bottom.append(badge);
      }
      link.append(top, bottom);
      const item = el("li");
      item.append(link);
      return item;
    }),
  );
}
