// The tab's connection to the broker: STOMP over WebSocket to RabbitMQ's Web STOMP plugin,
// through the page's own origin (/ws, proxied by the auth service). The broker is the access
// boundary: it logs the tab in with the session token (asking our auth service), lets it
// read only its own queue and write only to the outbox as itself (the `user-id` header is
// checked by the broker: a forged one closes the connection).
import { Client, ReconnectionTimeMode } from "@stomp/stompjs";
import type { IMessage } from "@stomp/stompjs";
import {
  CONTENT_TYPE,
  OUTBOX_EXCHANGE,
  PROTOCOL_HEADER,
  PROTOCOL_VERSION,
  SENT_MS_HEADER,
  VHOST,
} from "./generated/protocol";
import { queueOf, type TabSession } from "./session";
import type { Outgoing } from "./store";

export type LinkState = "connecting" | "online" | "offline";

export interface LinkEvents {
  state(state: LinkState, reason?: string): void;
  /** Connected and subscribed: the moment to publish what is waiting. */
  connected(): void;
  frame(message: IMessage): void;
  /** The broker has `outgoing` (its receipt for the SEND, sent once it is confirmed). */
  confirmed(outgoing: Outgoing): void;
}

/** Unacknowledged messages the broker hands this tab at once. */
const PREFETCH = 100;

export class Link {
  private readonly client: Client;
  private everConnected = false;

  constructor(
    private readonly session: TabSession,
    private readonly events: LinkEvents,
  ) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.client = new Client({
      brokerURL: `${scheme}://${location.host}/ws`,
      connectHeaders: { login: session.username, passcode: session.token, host: VHOST },
      // The server beats every 10 s; a silent link is given up after ~20 s.
      heartbeatIncoming: 10_000,
      heartbeatOutgoing: 10_000,
      connectionTimeout: 10_000,
      reconnectDelay: 500,
      reconnectTimeMode: ReconnectionTimeMode.EXPONENTIAL,
      maxReconnectDelay: 15_000,
      discardWebsocketOnCommFailure: true,
      debug: () => {}, // frames carry the token: never logged
      beforeConnect: () => this.events.state(this.everConnected ? "offline" : "connecting"),
      onConnect: () => this.onConnect(),
      onWebSocketClose: () => this.events.state(this.everConnected ? "offline" : "connecting"),
      onStompError: (frame) => this.events.state("offline", frame.headers.message),
    });
  }

  start(): void {
    addEventListener("online", this.retryNow);
    addEventListener("offline", this.dropNow);
    this.client.activate();
  }

  async stop(): Promise<void> {
    removeEventListener("online", this.retryNow);
    removeEventListener("offline", this.dropNow);
    await this.client.deactivate();
  }

  get connected(): boolean {
    return this.client.connected;
  }

  /** Publish one outgoing frame to the outbox as this user; false when offline (it stays
   * queued, and `connected` will bring it back). */
  publish(outgoing: Outgoing): boolean {
    if (!this.client.connected) return false;
    const receipt = `r-${outgoing.client_id}`;
    this.client.watchForReceipt(receipt, () => this.events.confirmed(outgoing));
    try {
      this.client.publish({
        // routing key = own username: one sender's messages go through one relay shard
        destination: `/exchange/${OUTBOX_EXCHANGE}/${this.session.username}`,
        headers: {
          "content-type": CONTENT_TYPE,
          "user-id": this.session.username,
          "amqp-message-id": outgoing.client_id,
          type: outgoing.type,
          persistent: "true",
          [SENT_MS_HEADER]: String(outgoing.sent_ms),
          [PROTOCOL_HEADER]: String(PROTOCOL_VERSION),
          receipt,
        },
        body: outgoing.body,
      });
      return true;
    } catch {
      return false; // the socket went between the check and the write
    }
  }

  private onConnect(): void {
    this.everConnected = true;
    this.client.subscribe(`/amq/queue/${queueOf(this.session)}`, (message) => this.events.frame(message), {
      ack: "client-individual",
      "prefetch-count": String(PREFETCH),
    });
    this.events.state("online");
    this.events.connected();
  }

  /** The browser says the network is back: do not wait out the backoff. */
  private readonly retryNow = (): void => {
    if (this.client.connected) return;
    void this.client.deactivate().then(() => this.client.activate());
  };

  /** The browser says the network is gone: show it now, not after the heartbeat timeout. */
  private readonly dropNow = (): void => {
    if (this.client.connected) this.client.forceDisconnect();
    this.events.state("offline");
  };
}
