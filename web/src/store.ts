// What this tab knows: its conversations, its messages (one per id), its unread counts, and
// what it sent that the broker has not confirmed yet. Kept in sessionStorage, so a reload of
// the tab loses nothing it already took from its queue. (Issue 13's archive will be the
// history; this stays the tab's cache and its queue of unconfirmed frames.)
import { TYPE_RECEIPT, TYPE_SEND } from "./generated/protocol";
import type { DeliveredMessage, ReceiptNotice } from "./generated/protocol";

export type Status = "sending" | "accepted" | "delivered" | "read" | "failed";

export interface Message {
  id: string;
  client_id: string | null;
  from: string;
  to: string;
  text: string;
  sent_at: string;
  /** sent_at in ms, for ordering */
  at: number;
  /** Only for what this user sent. */
  status?: Status;
  detail?: string;
}

/** A frame waiting for the broker's receipt: published again, unchanged (same client id,
 * same send time, so the same server id), after every reconnect until the broker has it. */
export interface Outgoing {
  client_id: string;
  sent_ms: number;
  type: typeof TYPE_SEND | typeof TYPE_RECEIPT;
  body: string;
}

export interface ConversationSummary {
  peer: string;
  last: Message | undefined;
  unread: number;
}

interface Saved {
  messages: Message[];
  peers: string[];
  unread: [string, number][];
  outgoing: Outgoing[];
}

/** Per conversation, at most this many messages are kept across reloads. */
const KEPT_PER_CONVERSATION = 500;
const RANK: Record<Status, number> = { failed: 0, sending: 1, accepted: 2, delivered: 3, read: 4 };

export class Store {
  private readonly byId = new Map<string, Message>();
  private readonly byPeer = new Map<string, Message[]>();
  private readonly sentByClientId = new Map<string, Message>();
  readonly unread = new Map<string, number>();
  outgoing: Outgoing[] = [];
  private readonly key: string;

  constructor(readonly me: string) {
    this.key = `messenger.state.${me}`;
    this.load();
  }

  peerOf(message: { from: string; to: string }): string {
    return message.from === this.me ? message.to : message.from;
  }

  /** Every conversation, the most recent first. */
  conversations(): ConversationSummary[] {
    return [...this.byPeer.entries()]
      .map(([peer, messages]) => ({ peer, last: messages.at(-1), unread: this.unread.get(peer) ?? 0 }))
      .sort((a, b) => (b.last?.at ?? Infinity) - (a.last?.at ?? Infinity));
  }

  open(peer: string): void {
    if (!this.byPeer.has(peer)) this.byPeer.set(peer, []);
    this.unread.delete(peer);
    this.save();
  }

  messages(peer: string): readonly Message[] {
    return this.byPeer.get(peer) ?? [];
  }

  /** A message from the queue: "new", "known" (a redelivery, or the copy of one this tab
   * sent, which settles it), shown once either way. */
  receive(delivered: DeliveredMessage, viewing: boolean): "new" | "known" {
    const known = this.byId.get(delivered.id);
    if (known) {
      if (known.from === this.me && this.raise(known, "accepted")) this.save();
      return "known";
    }
    const message: Message = {
      id: delivered.id,
      client_id: delivered.client_id ?? null,
      from: delivered.from,
      to: delivered.to,
      text: delivered.text,
      sent_at: delivered.sent_at,
      at: Date.parse(delivered.sent_at) || Date.now(),
    };
    if (message.from === this.me) message.status = "accepted"; // sent by another device
    this.insert(message);
    const peer = this.peerOf(message);
    if (message.from !== this.me && !viewing) this.unread.set(peer, (this.unread.get(peer) ?? 0) + 1);
    this.save();
    return "new";
  }

  /** A message this tab sends now: shown at once as "sending", queued until confirmed. */
  send(to: string, text: string, id: string, clientId: string, sentMs: number): Message {
    const message: Message = {
      id,
      client_id: clientId,
      from: this.me,
      to,
      text,
      sent_at: new Date(sentMs).toISOString(),
      at: sentMs,
      status: "sending",
    };
    this.insert(message);
    this.outgoing.push({ client_id: clientId, sent_ms: sentMs, type: TYPE_SEND, body: JSON.stringify({ to, text }) });
    this.save();
    return message;
  }

  /** A delivered receipt for a message this user received, to go out with the sends. */
  queueReceipt(messageId: string, to: string, clientId: string, sentMs: number): Outgoing {
    const outgoing: Outgoing = {
      client_id: clientId,
      sent_ms: sentMs,
      type: TYPE_RECEIPT,
      body: JSON.stringify({ message_id: messageId, to, status: "delivered" }),
    };
    this.outgoing.push(outgoing);
    this.save();
    return outgoing;
  }

  /** The broker confirmed a frame: it is safe, never sent again; a send shows ✓. */
  settle(clientId: string): Message | undefined {
    this.outgoing = this.outgoing.filter((o) => o.client_id !== clientId);
    const message = this.sentByClientId.get(clientId);
    if (message) this.raise(message, "accepted");
    this.save();
    return message;
  }

  /** A receipt notice; taken only from the recipient of the message it names. */
  receipt(notice: ReceiptNotice): Message | undefined {
    const message = this.byId.get(notice.message_id);
    if (!message || message.from !== this.me || notice.reader !== message.to) return undefined;
    if (!this.raise(message, notice.status)) return undefined;
    this.save();
    return message;
  }

  /** The relay refused a send (an answer on the device queue, with issue 13). */
  fail(clientId: string, detail: string): Message | undefined {
    const message = this.sentByClientId.get(clientId);
    if (!message) return undefined;
    message.status = "failed";
    message.detail = detail;
    this.outgoing = this.outgoing.filter((o) => o.client_id !== clientId);
    this.save();
    return message;
  }

  clear(): void {
    sessionStorage.removeItem(this.key);
  }

  private raise(message: Message, status: Status): boolean {
    if (message.status === undefined || message.status === "failed") return false;
    if (RANK[status] <= RANK[message.status]) return false;
    message.status = status;
    return true;
  }

  private insert(message: Message): void {
    this.byId.set(message.id, message);
    if (message.from === this.me && message.client_id) this.sentByClientId.set(message.client_id, message);
    const peer = this.peerOf(message);
    let list = this.byPeer.get(peer);
    if (!list) this.byPeer.set(peer, (list = []));
    let i = list.length;
    while (i > 0 && before(message, list[i - 1]!)) i--;
    list.splice(i, 0, message);
  }

  private save(): void {
    const saved: Saved = {
      messages: [...this.byPeer.values()].flatMap((list) => list.slice(-KEPT_PER_CONVERSATION)),
      peers: [...this.byPeer.keys()],
      unread: [...this.unread.entries()],
      outgoing: this.outgoing,
    };
    try {
      sessionStorage.setItem(this.key, JSON.stringify(saved));
    } catch {
      // Storage full: what this tab shows stays in memory for as long as it is open.
    }
  }

  private load(): void {
    try {
      const raw = sessionStorage.getItem(this.key);
      if (!raw) return;
      const saved = JSON.parse(raw) as Saved;
      for (const peer of saved.peers) this.byPeer.set(peer, []);
      for (const message of saved.messages) this.insert(message);
      for (const [peer, count] of saved.unread) this.unread.set(peer, count);
      this.outgoing = saved.outgoing;
    } catch {
      sessionStorage.removeItem(this.key);
    }
  }
}

function before(a: Message, b: Message): boolean {
  return a.at < b.at || (a.at === b.at && a.id < b.id);
}
