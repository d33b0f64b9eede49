/**
 * `@parley/client`: Parley's public gateway (REST and WebSocket) for
 * browsers and Node.js, with the server's guarantees carried to your code:
 *
 * - a room's timeline events (messages, edits, deletions, reactions, member
 *   and room updates) arrive once each and in `seq` order, across
 *   reconnects: the connection reconnects by itself with backoff and
 *   jitter and rejoins every room with `since_seq`;
 * - a send is stored once: its `client_id` is resent after every reconnect
 *   until the server acknowledges it;
 * - the access token is renewed before it expires and handed to the live
 *   connection in a `refresh` frame, so it is never closed for an expired
 *   token;
 * - errors say what to do: retry, sign in again, or fix the input.
 *
 * The wire formats are the README's "WebSocket protocol" and "REST API".
 *
 * @packageDocumentation
 */

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/** What a caller should do about an error. */
export type ErrorAction = "retry" | "sign_in" | "fix_input";

/** Codes whose cause passes: the same call may succeed later. */
const TRANSIENT = new Set(["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "NETWORK"]);

/**
 * An error from the server (its gRPC status name as `code`, and the HTTP
 * status for REST calls) or from the network (`code` "NETWORK").
 */
export class ParleyError extends Error {
  /** The gRPC status name the server gave, or "NETWORK". */
  readonly code: string;
  /** The HTTP status of a REST answer; 0 for WebSocket errors and the network. */
  readonly status: number;

  constructor(code: string, message: string, status = 0) {
    super(message);
    this.name = "ParleyError";
    this.code = code;
    this.status = status;
  }

  /** What to do: retry later, sign in again, or change the request. */
  get action(): ErrorAction {
    if (this.code === "UNAUTHENTICATED") return "sign_in";
    if (TRANSIENT.has(this.code) || this.status >= 500) return "retry";
    return "fix_input";
  }
}

// ---------------------------------------------------------------------------
// Types of the wire (README: "REST API", "WebSocket protocol")
// ---------------------------------------------------------------------------

/** Tokens of a signed-in user; keep them to resume without a password. */
export interface Session {
  accessToken: string;
  refreshToken: string;
  /** When the access token expires, in milliseconds since the epoch. */
  expiresAt: number;
}

/** A user, as `GET /api/v1/me` answers. */
export interface User {
  id: string;
  username: string;
  display_name: string;
  email: string;
  status: string;
  roles: string[];
  [field: string]: unknown;
}

/** A room as `POST /api/v1/rooms` answers. */
export interface RoomInfo {
  id: string;
  name: string;
  short_code: string;
  private: boolean;
  [field: string]: unknown;
}

/** An attachment's metadata. */
export interface Attachment {
  id: string;
  filename: string;
  content_type: string;
  size: number;
  width: number;
  height: number;
  [field: string]: unknown;
}

/** A stored message, live or from history. */
export interface Message {
  id: string;
  room_id: string;
  seq: number;
  sender_id: string;
  sender_name: string;
  content: string;
  client_id: string;
  sent_at: string;
  reply_to: number;
  edited_at: string;
  deleted: boolean;
  reactions: { emoji: string; count: number; user_ids: string[] }[];
  attachments: Attachment[];
  [field: string]: unknown;
}

/** One page of a room's history, oldest first. */
export interface HistoryPage {
  messages: Message[];
  has_more: boolean;
}

/** The server's answer to a send (or another frame with a `client_id`). */
export interface Ack {
  client_id: string;
  message_id: string;
  seq: number;
}

/** The kinds of timeline events: each takes the room's next `seq`. */
export type TimelineKind =
  | "message"
  | "message_edited"
  | "message_deleted"
  | "reaction"
  | "member_update"
  | "room_updated";

const TIMELINE: ReadonlySet<string> = new Set([
  "message",
  "message_edited",
  "message_deleted",
  "reaction",
  "member_update",
  "room_updated",
]);

/** A timeline event: `kind` names the server frame, `data` is its body. */
export interface TimelineEvent {
  kind: TimelineKind;
  seq: number;
  data: Record<string, unknown> & { room_id: string; seq: number };
}

/** A frame from the server: one key naming it, its body as the value. */
export type ServerFrame = Record<string, Record<string, unknown>>;

/** The subset of the WebSocket API the client uses (browsers, Node 22+, `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** How to make a WebSocket: the global `WebSocket` by default. */
export type WebSocketFactory = new (url: string, protocols?: string | string[]) => WebSocketLike;

// ---------------------------------------------------------------------------
// A small typed event emitter
// ---------------------------------------------------------------------------

type Listener<T> = (value: T) => void;

/** Listeners by event name; `on` returns the function that removes one. */
class Emitter<Events> {
  private listeners = new Map<keyof Events, Set<Listener<never>>>();

  /** Calls `listener` for every `event` until the returned function is called. */
  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener as Listener<never>);
    return () => set.delete(listener as Listener<never>);
  }

  protected emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const listener of [...(this.listeners.get(event) ?? [])]) {
      try {
        (listener as Listener<Events[K]>)(value);
      } catch (err) {
        // One listener's bug must not stop the others or the connection.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------

/** The share of a token's life after which it is renewed. */
const RENEW_AT = 2 / 3;
/** Backoff between reconnects: doubling from the first, up to the most. */
const BACKOFF_FIRST_MS = 250;
const BACKOFF_MOST_MS = 30_000;
/** A connection open this long resets the backoff. */
const STABLE_AFTER_MS = 5_000;
/** How often the connection is pinged; an unanswered ping by the next one means the link is dead. */
const PING_EVERY_MS = 15_000;
/** How often a read (GET) is tried before its error is returned, and the backoff between tries. */
const READ_TRIES = 6;
const READ_RETRY_FIRST_MS = 250;
const READ_RETRY_MOST_MS = 2_000;
/** How long a REST call (not an upload or a download) may take. */
const REQUEST_TIMEOUT_MS = 30_000;
/** How long opening the WebSocket may take before it counts as lost. */
const OPEN_TIMEOUT_MS = 10_000;
/** Most messages history returns at once. */
const HISTORY_LIMIT = 200;

/** The wait before reconnect attempt `attempt` (1-based): full jitter over the upper half. */
export function backoff(attempt: number, random: () => number = Math.random): number {
  const full = Math.min(BACKOFF_MOST_MS, BACKOFF_FIRST_MS * 2 ** Math.min(Math.max(attempt - 1, 0), 16));
  return Math.round(full / 2 + (full / 2) * random());
}

/** A timer that does not keep Node's process alive on its own. */
function timer(callback: () => void, ms: number): ReturnType<typeof setTimeout> {
  const handle = setTimeout(callback, ms);
  (handle as unknown as { unref?: () => void }).unref?.();
  return handle;
}

let clientIds = 0;

/** A fresh `client_id`: unique per page or process, and across restarts. */
export function newClientId(): string {
  clientIds += 1;
  const random = Math.random().toString(36).slice(2, 10);
  return `c-${Date.now().toString(36)}-${random}-${clientIds}`;
}

// ---------------------------------------------------------------------------
// The client: REST and tokens
// ---------------------------------------------------------------------------

/** Options of {@link ParleyClient}. */
export interface ClientOptions {
  /** The gateway, e.g. `http://localhost:8080`; in a browser, the page's origin by default. */
  server?: string;
  /** Sign in with an API key (`pk_…`) instead of a password; it is never refreshed. */
  apiKey?: string;
  /** Resume a session kept from an earlier `login`. */
  session?: Session;
  /** The `fetch` to use; the global one by default. */
  fetch?: typeof fetch;
  /** The WebSocket constructor; the global one by default (Node 20 needs `--experimental-websocket` or the `ws` package). */
  WebSocket?: WebSocketFactory;
}

/** Events of {@link ParleyClient}. */
export interface ClientEvents {
  /** The session changed: signed in, renewed, or ended (`null`). Store it to resume later. */
  session: Session | null;
}

interface TokenPair {
  access_token: string;
  refresh_token: string;
  expires_in: number;
}

/** Options of an upload. */
export interface UploadOptions {
  /** The file name the attachment keeps; a `File`'s own name by default. */
  filename?: string;
  /** The declared type; the server sniffs the bytes and has the last word. */
  contentType?: string;
  /** Called with bytes sent so far and the total (in browsers, as the upload goes). */
  onProgress?: (sent: number, total: number) => void;
  /** Aborts the upload; the promise then rejects with code "CANCELLED". */
  signal?: AbortSignal;
}

/**
 * A client of one gateway for one user. Sign in with {@link login}, an API
 * key, or a kept {@link Session}; then call the REST helpers or
 * {@link connect} for the live connection.
 */
export class ParleyClient extends Emitter<ClientEvents> {
  /** The gateway's base URL, without a trailing slash. */
  readonly server: string;
  private readonly apiKey: string | null;
  private readonly fetchImpl: typeof fetch;
  private readonly socketImpl: WebSocketFactory | undefined;
  private current: Session | null;
  private renewing: Promise<Session> | null = null;
  private renewTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly connections = new Set<Connection>();

  constructor(options: ClientOptions = {}) {
    super();
    const origin = (globalThis as { location?: { origin?: string } }).location?.origin;
    const server = options.server ?? origin;
    if (!server) throw new ParleyError("INVALID_ARGUMENT", "no server: pass `server`, e.g. http://localhost:8080");
    this.server = server.replace(/\/+$/, "");
    this.apiKey = options.apiKey ?? null;
    const fetchImpl = options.fetch ?? globalThis.fetch;
    this.fetchImpl = fetchImpl.bind(globalThis);
    this.socketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketFactory }).WebSocket;
    this.current = options.session ?? null;
    this.scheduleRenewal();
  }

  /** The session now, or `null` (signed out, or signed in with an API key). */
  get session(): Session | null {
    return this.current;
  }

  /** Whether the client has credentials: a session or an API key. */
  get signedIn(): boolean {
    return this.apiKey !== null || this.current !== null;
  }

  /** Creates an account (`POST /api/v1/auth/register`); it does not sign in. */
  register(username: string, password: string, email?: string): Promise<User> {
    return this.call<User>("POST", "/auth/register", { username, password, email }, null);
  }

  /** Signs in with a password; the session is renewed from now on. */
  async login(username: string, password: string): Promise<Session> {
    const issued = Date.now();
    const pair = await this.call<TokenPair>("POST", "/auth/login", { username, password }, null);
    return this.setSession(pair, issued);
  }

  /** Ends the session on the server and here; live connections close. */
  async logout(): Promise<void> {
    const session = this.current;
    this.end();
    if (session) await this.call("POST", "/auth/logout", { refresh_token: session.refreshToken }, null);
  }

  /** Forgets the credentials here and closes every connection, without telling the server. */
  end(): void {
    clearTimeout(this.renewTimer);
    for (const connection of [...this.connections]) connection.close();
    if (this.current) {
      this.current = null;
      this.emit("session", null);
    }
  }

  /**
   * A bearer credential usable now: the API key, or the access token,
   * renewed first when it is about to expire.
   */
  async bearer(): Promise<string> {
    if (this.apiKey !== null) return this.apiKey;
    const session = this.current;
    if (!session) throw new ParleyError("UNAUTHENTICATED", "signed out: log in first", 401);
    if (Date.now() >= session.expiresAt - 5_000) return (await this.renew()).accessToken;
    return session.accessToken;
  }

  /**
   * Renews the access token with the refresh token (one renewal at a time:
   * a refresh token is single use). A refused refresh ends the session.
   */
  renew(): Promise<Session> {
    if (this.renewing) return this.renewing;
    const spent = this.current?.refreshToken;
    if (!spent) return Promise.reject(new ParleyError("UNAUTHENTICATED", "no session to renew", 401));
    this.renewing = (async () => {
      try {
        const issued = Date.now();
        const pair = await this.call<TokenPair>("POST", "/auth/refresh", { refresh_token: spent }, null);
        // Signed out meanwhile: the new tokens are not wanted.
        if (this.current?.refreshToken !== spent) {
          throw new ParleyError("UNAUTHENTICATED", "signed out", 401);
        }
        return this.setSession(pair, issued);
      } catch (err) {
        if (err instanceof ParleyError && err.action === "sign_in") this.end();
        else this.scheduleRenewal(5_000 + Math.random() * 5_000);
        throw err;
      } finally {
        this.renewing = null;
      }
    })();
    return this.renewing;
  }

  /**
   * An authenticated REST call under `/api/v1`: JSON in and out; a 401 is
   * answered by one renewal and one retry.
   */
  async request<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    // A read the server could not serve for a passing reason (a replica
    // restarting, a busy service) is tried again with backoff: it changes
    // nothing, so repeating it is safe.
    for (let tries = 1, wait = READ_RETRY_FIRST_MS; ; tries++, wait = Math.min(wait * 2, READ_RETRY_MOST_MS)) {
      try {
        return await this.requestOnce<T>(method, path, body);
      } catch (err) {
        if (method !== "GET" || !(err instanceof ParleyError) || err.action !== "retry" || tries >= READ_TRIES) throw err;
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
    }
  }

  private requestOnce<T>(method: string, path: string, body?: unknown): Promise<T> {
    return this.authorized((token) => this.call<T>(method, path, body, token));
  }

  /**
   * Runs `call` with a bearer credential; a 401 (the token revoked or
   * expired early) is answered by one renewal and one more try.
   */
  private async authorized<T>(call: (token: string) => Promise<T>): Promise<T> {
    const token = await this.bearer();
    try {
      return await call(token);
    } catch (err) {
      if (!(err instanceof ParleyError) || err.status !== 401 || this.apiKey !== null) throw err;
      return call((await this.renew()).accessToken);
    }
  }

  /** The signed-in user. */
  me(): Promise<User> {
    return this.request<User>("GET", "/me");
  }

  /** Creates a room; with a password it is private. */
  createRoom(name: string, password?: string): Promise<RoomInfo> {
    return this.request<RoomInfo>("POST", "/rooms", password ? { name, password } : { name });
  }

  /** The user's rooms, latest activity first. */
  async myRooms(): Promise<Record<string, unknown>[]> {
    const answer = await this.request<{ rooms: Record<string, unknown>[] }>("GET", "/rooms");
    return answer.rooms ?? [];
  }

  /** The direct room with `userId`, made on first use. */
  openDirect(userId: string): Promise<RoomInfo> {
    return this.request<RoomInfo>("POST", "/dms", { user_id: userId });
  }

  /** A page of a room's history before `beforeSeq` (0: the newest), oldest first. */
  history(roomId: string, options: { beforeSeq?: number; limit?: number } = {}): Promise<HistoryPage> {
    const query = new URLSearchParams({
      limit: String(options.limit ?? 50),
      before_seq: String(options.beforeSeq ?? 0),
    });
    return this.request<HistoryPage>("GET", `/rooms/${encodeURIComponent(roomId)}/messages?${query}`);
  }

  /**
   * Uploads a file as an attachment (`POST /api/v1/attachments`), streamed
   * by the gateway. In browsers progress is reported as bytes leave.
   */
  async upload(data: Blob | Uint8Array, options: UploadOptions = {}): Promise<Attachment> {
    const blob = data instanceof Blob ? data : new Blob([data as BlobPart]);
    const filename = options.filename ?? (data as { name?: string }).name ?? "file";
    const contentType = options.contentType || blob.type || "application/octet-stream";
    const path = `/attachments?filename=${encodeURIComponent(filename)}`;
    const send = async (token: string): Promise<Attachment> => {
      const progress = options.onProgress;
      if (progress && typeof XMLHttpRequest !== "undefined") {
        return this.uploadWithProgress(path, blob, contentType, token, progress, options.signal);
      }
      const answer = await this.send("POST", path, blob, contentType, token, options.signal);
      progress?.(blob.size, blob.size);
      return answer as Attachment;
    };
    return this.authorized(send);
  }

  /** Downloads an attachment (or its thumbnail) as a streaming `Response`. */
  async download(id: string, options: { thumbnail?: boolean } = {}): Promise<Response> {
    const path = `/attachments/${encodeURIComponent(id)}${options.thumbnail ? "/thumbnail" : ""}`;
    const fetchWith = async (token: string) => {
      let response: Response;
      try {
        response = await this.fetchImpl(`${this.server}/api/v1${path}`, {
          headers: { Authorization: `Bearer ${token}` },
          cache: "no-store",
        });
      } catch {
        throw networkError();
      }
      if (!response.ok) throw await errorOf(response);
      return response;
    };
    return this.authorized(fetchWith);
  }

  /**
   * A URL of an attachment for an `<img>` or a link: it carries the current
   * access token, so it works until that token expires.
   */
  attachmentUrl(id: string, options: { thumbnail?: boolean } = {}): string {
    const token = this.apiKey ?? this.current?.accessToken ?? "";
    const path = `/api/v1/attachments/${encodeURIComponent(id)}${options.thumbnail ? "/thumbnail" : ""}`;
    return `${this.server}${path}?token=${encodeURIComponent(token)}`;
  }

  /** Opens the live connection; it stays open, reconnecting, until closed. */
  connect(): Connection {
    if (!this.socketImpl) {
      throw new ParleyError(
        "FAILED_PRECONDITION",
        "no WebSocket here: pass `WebSocket` (Node 20: run with --experimental-websocket, or use the `ws` package)",
      );
    }
    const connection = new Connection(this, this.socketImpl, (closed) => this.connections.delete(closed));
    this.connections.add(connection);
    return connection;
  }

  /** The gateway's WebSocket URL. */
  get socketUrl(): string {
    return `${this.server.replace(/^http/, "ws")}/ws`;
  }

  /** Keeps new tokens; their life is counted from `issued`, before the request, so a renewal is never late. */
  private setSession(pair: TokenPair, issued: number): Session {
    const lifetime = Number(pair.expires_in) > 0 ? Number(pair.expires_in) : 900;
    this.current = {
      accessToken: pair.access_token,
      refreshToken: pair.refresh_token,
      expiresAt: issued + lifetime * 1000,
    };
    this.scheduleRenewal();
    this.emit("session", this.current);
    for (const connection of this.connections) connection.tokenRenewed(this.current.accessToken);
    return this.current;
  }

  private scheduleRenewal(after?: number): void {
    clearTimeout(this.renewTimer);
    const session = this.current;
    if (!session) return;
    // Renew once two thirds of the token's life are gone.
    const life = Math.max(0, session.expiresAt - Date.now());
    const wait = after ?? life * RENEW_AT;
    this.renewTimer = timer(() => {
      this.renew().catch(() => {
        /* renew() handled it: a new attempt or the end of the session */
      });
    }, wait);
  }

  /** One REST call; `token` null for the calls that take none. */
  private async call<T>(method: string, path: string, body: unknown, token: string | null): Promise<T> {
    const json = body === undefined ? undefined : JSON.stringify(body);
    return (await this.send(method, path, json, json === undefined ? undefined : "application/json", token)) as T;
  }

  private async send(
    method: string,
    path: string,
    body: BodyInit | undefined,
    contentType: string | undefined,
    token: string | null,
    signal?: AbortSignal,
  ): Promise<unknown> {
    const headers: Record<string, string> = { Accept: "application/json" };
    if (contentType) headers["Content-Type"] = contentType;
    if (token) headers.Authorization = `Bearer ${token}`;
    // A call that stalls fails rather than hanging; an upload has only
    // its caller's signal, since a large file may take long.
    const limit = signal ?? AbortSignal.timeout(REQUEST_TIMEOUT_MS);
    let response: Response;
    try {
      response = await this.fetchImpl(`${this.server}/api/v1${path}`, { method, headers, body, cache: "no-store", signal: limit });
    } catch {
      throw signal?.aborted ? cancelled() : networkError();
    }
    if (!response.ok) throw await errorOf(response);
    if (response.status === 204) return null;
    const text = await response.text();
    if (!text) return null;
    try {
      return JSON.parse(text);
    } catch {
      throw new ParleyError("INTERNAL", "the server sent a body that is not JSON", response.status);
    }
  }

  private uploadWithProgress(
    path: string,
    blob: Blob,
    contentType: string,
    token: string,
    progress: (sent: number, total: number) => void,
    signal?: AbortSignal,
  ): Promise<Attachment> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(cancelled());
      const xhr = new XMLHttpRequest();
      signal?.addEventListener("abort", () => {
        xhr.abort();
        reject(cancelled());
      });
      xhr.open("POST", `${this.server}/api/v1${path}`);
      xhr.setRequestHeader("Authorization", `Bearer ${token}`);
      xhr.setRequestHeader("Content-Type", contentType);
      xhr.upload.onprogress = (event) => progress(event.loaded, event.total || blob.size);
      xhr.onerror = () => reject(networkError());
      xhr.onload = () => {
        let body: unknown = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          /* checked below */
        }
        if (xhr.status >= 200 && xhr.status < 300 && body) {
          progress(blob.size, blob.size);
          resolve(body as Attachment);
        } else {
          reject(errorFromBody(xhr.status, body));
        }
      };
      xhr.send(blob);
    });
  }
}

function cancelled(): ParleyError {
  return new ParleyError("CANCELLED", "the upload was cancelled");
}

function networkError(): ParleyError {
  return new ParleyError("NETWORK", "cannot reach the server; check the connection and try again");
}

async function errorOf(response: Response): Promise<ParleyError> {
  let body: unknown = null;
  try {
    body = JSON.parse(await response.text());
  } catch {
    /* not the error body */
  }
  return errorFromBody(response.status, body);
}

function errorFromBody(status: number, body: unknown): ParleyError {
  const error = (body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  if (error && typeof error.message === "string") {
    return new ParleyError(String(error.code ?? "UNKNOWN"), error.message, status);
  }
  const code = status === 401 ? "UNAUTHENTICATED" : status === 429 ? "RESOURCE_EXHAUSTED" : status >= 500 ? "UNAVAILABLE" : "UNKNOWN";
  return new ParleyError(code, `the server answered ${status}`, status);
}

// ---------------------------------------------------------------------------
// The connection
// ---------------------------------------------------------------------------

/** Where the connection stands. */
export type ConnectionState = "connecting" | "online" | "reconnecting" | "closed";

/** Events of {@link Connection}. */
export interface ConnectionEvents {
  /** The state changed; `reason` says why a connection was lost or closed. */
  state: { state: ConnectionState; reason: string; attempt: number; retryInMs: number };
  /** Every frame the server sent, as it came: for what the room API does not cover. */
  frame: ServerFrame;
  /** An `error` frame no pending call claimed (for example a refused `refresh`). */
  error: ParleyError & { roomId?: string; clientId?: string };
}

interface PendingCall {
  roomId: string;
  clientId: string;
  frame: string;
  resolve: (ack: Ack) => void;
  reject: (err: ParleyError) => void;
}

/**
 * The live WebSocket, kept open: it reconnects with backoff and jitter,
 * rejoins every room with `since_seq`, resends unacknowledged sends with
 * their `client_id`, answers silence with a reconnect, and hands renewed
 * tokens to the server in band.
 */
export class Connection extends Emitter<ConnectionEvents> {
  private socket: WebSocketLike | null = null;
  private current: ConnectionState = "connecting";
  private attempt = 0;
  private closed = false;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private stableTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private awaitingPong: string | null = null;
  private pings = 0;
  private tokenUsed = "";
  private readonly rooms = new Map<string, Room>();
  /** Sends and other acknowledged frames not answered yet, in the order made. */
  private readonly pending = new Map<string, PendingCall>();
  private readonly online: () => void;

  /** @internal Made by {@link ParleyClient.connect}. */
  constructor(
    private readonly client: ParleyClient,
    private readonly Socket: WebSocketFactory,
    private readonly onClosed: (connection: Connection) => void,
  ) {
    super();
    this.online = () => {
      // Back online after sleep or a network change: try now, not after the backoff.
      if (!this.closed && !this.socket) {
        this.attempt = 0;
        void this.open();
      }
    };
    globalEvents()?.addEventListener("online", this.online);
    void this.open();
  }

  /** Where the connection stands now. */
  get state(): ConnectionState {
    return this.current;
  }

  /** Whether frames go out now. */
  get isOpen(): boolean {
    return this.socket !== null && this.socket.readyState === 1 && this.current === "online";
  }

  /**
   * Joins a room (a password for a private one) and resolves once the server
   * answers `joined`; from then on its events arrive on the room, also
   * across reconnects. Joining a room already joined returns it.
   */
  join(roomId: string, options: { password?: string } = {}): Promise<Room> {
    const known = this.rooms.get(roomId);
    if (known) return known.ready;
    const room = new Room(this, roomId, options.password);
    this.rooms.set(roomId, room);
    if (this.isOpen) this.sendJoin(room);
    return room.ready;
  }

  /** A room joined on this connection. */
  room(roomId: string): Room | undefined {
    return this.rooms.get(roomId);
  }

  /** Every room joined on this connection. */
  get joinedRooms(): Room[] {
    return [...this.rooms.values()];
  }

  /**
   * Sends a raw frame now (`false` while disconnected). The room API is
   * the safe way; this is for frames that need no guarantee (typing, read).
   */
  sendFrame(frame: Record<string, unknown>): boolean {
    return this.sendText(JSON.stringify(frame));
  }

  private sendText(text: string): boolean {
    const socket = this.socket;
    if (!socket || socket.readyState !== 1) return false;
    try {
      socket.send(text);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Sends `frame` (whose body carries `client_id`) until the server
   * acknowledges it: it goes out now if the room is joined, else after the
   * next (re)join, and again after every reconnect until its `ack` or `error`.
   */
  call(roomId: string, clientId: string, frame: Record<string, unknown>): Promise<Ack> {
    if (this.closed) return Promise.reject(new ParleyError("CANCELLED", "the connection is closed"));
    // Nothing would ever send it: the room is not joined here (left, or removed by the server).
    if (!this.rooms.has(roomId)) return Promise.reject(new ParleyError("CANCELLED", `${roomId} is not joined on this connection`));
    const known = this.pending.get(clientId);
    if (known) {
      // The same client_id again: one stored result, one answer.
      return new Promise((resolve, reject) => {
        const { resolve: first, reject: firstReject } = known;
        known.resolve = (ack) => (first(ack), resolve(ack));
        known.reject = (err) => (firstReject(err), reject(err));
      });
    }
    return new Promise((resolve, reject) => {
      const call: PendingCall = { roomId, clientId, frame: JSON.stringify(frame), resolve, reject };
      this.pending.set(clientId, call);
      if (this.rooms.get(roomId)?.live) this.sendText(call.frame);
    });
  }

  /** Closes the connection for good; pending calls are rejected. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stop();
    globalEvents()?.removeEventListener("online", this.online);
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close(1000, "closed");
      } catch {
        /* already closed */
      }
    }
    const cancelled = new ParleyError("CANCELLED", "the connection was closed");
    for (const call of this.pending.values()) call.reject(cancelled);
    this.pending.clear();
    for (const room of this.rooms.values()) room.failJoin(cancelled);
    this.setState("closed", "closed");
    this.onClosed(this);
  }

  /** @internal The client renewed the token: the live socket gets it in band. */
  tokenRenewed(token: string): void {
    if (this.isOpen && token !== this.tokenUsed) {
      this.tokenUsed = token;
      this.sendFrame({ refresh: { token } });
    }
  }

  /** @internal A room asks to leave. */
  leaveRoom(room: Room): void {
    this.forget(room, "the room was left");
    this.sendFrame({ leave: { room_id: room.id } });
  }

  /** Stops following `room`; its unanswered calls are rejected, as nothing would send them. */
  private forget(room: Room, why: string): void {
    this.rooms.delete(room.id);
    for (const [id, call] of this.pending) {
      if (call.roomId === room.id) {
        call.reject(new ParleyError("CANCELLED", why));
        this.pending.delete(id);
      }
    }
  }

  private setState(state: ConnectionState, reason = "", retryInMs = 0): void {
    this.current = state;
    this.emit("state", { state, reason, attempt: this.attempt, retryInMs });
  }

  private stop(): void {
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.stableTimer);
    clearInterval(this.pingTimer);
  }

  private async open(): Promise<void> {
    if (this.closed || this.socket) return;
    clearTimeout(this.reconnectTimer);
    let token: string;
    try {
      token = await this.client.bearer();
    } catch (err) {
      const error = err instanceof ParleyError ? err : networkError();
      if (error.action === "sign_in") return this.refuse(error);
      return this.lost(error.message);
    }
    if (this.closed || this.socket) return;
    this.setState(this.attempt > 0 ? "reconnecting" : "connecting", this.attempt > 0 ? "opening" : "");
    let socket: WebSocketLike;
    try {
      socket = new this.Socket(this.client.socketUrl, [`bearer.${token}`]);
    } catch (err) {
      return this.lost(`cannot open a WebSocket: ${String(err)}`);
    }
    this.socket = socket;
    this.tokenUsed = token;
    let opened = false;
    const openTimer = timer(() => {
      // Neither open nor refused: a silent network. Count it as lost.
      if (!opened && this.socket === socket) {
        try {
          socket.close();
        } catch {
          /* already closing */
        }
        socket.onclose?.({ code: 4000, reason: "timed out opening the connection" });
      }
    }, OPEN_TIMEOUT_MS);
    socket.onopen = () => {
      clearTimeout(openTimer);
      opened = true;
      this.stableTimer = timer(() => (this.attempt = 0), STABLE_AFTER_MS);
      this.setState("online");
      this.startPing();
      // Renewed while this socket was opening.
      const now = this.client.session?.accessToken;
      if (now && now !== this.tokenUsed) this.tokenRenewed(now);
      for (const room of this.rooms.values()) this.sendJoin(room);
    };
    socket.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      let frame: unknown;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame && typeof frame === "object") this.handle(frame as ServerFrame);
    };
    socket.onerror = () => {
      /* onclose follows */
    };
    socket.onclose = (event) => {
      clearTimeout(openTimer);
      if (this.socket !== socket) return;
      this.socket = null;
      this.stop();
      for (const room of this.rooms.values()) room.live = false;
      if (this.closed) return;
      void this.closedWith(event.code, event.reason, opened);
    };
  }

  private async closedWith(code: number, reason: string, opened: boolean): Promise<void> {
    if (code === 4001 || !opened) {
      // An expired token, or an upgrade refused (a browser cannot say why):
      // a stale token is the one cause the client can fix.
      try {
        const me = await this.client.request("GET", "/me").then(() => null, (err: unknown) => err);
        if (me instanceof ParleyError && me.action === "sign_in") return this.refuse(me);
      } catch {
        /* the next attempt tells */
      }
      if (code === 4001) this.attempt = 0;
    }
    const why =
      code === 1001
        ? "the server is restarting"
        : code === 4008
          ? "the connection was too slow"
          : code === 4001
            ? "the token expired"
            : reason || `connection lost (${code})`;
    this.lost(why);
  }

  private lost(reason: string): void {
    if (this.closed) return;
    this.attempt = Math.min(this.attempt + 1, 30);
    const wait = backoff(this.attempt);
    this.setState("reconnecting", reason, wait);
    this.reconnectTimer = timer(() => void this.open(), wait);
  }

  /** The credentials were refused: nothing to retry. */
  private refuse(error: ParleyError): void {
    this.emit("error", error);
    this.close();
  }

  private startPing(): void {
    clearInterval(this.pingTimer);
    this.awaitingPong = null;
    this.pingTimer = setInterval(() => {
      if (this.awaitingPong !== null) {
        // No answer in a whole interval: the link is dead though no close came.
        this.socket?.close(4000, "ping timeout");
        const socket = this.socket;
        if (socket?.onclose) socket.onclose({ code: 4000, reason: "no answer to a ping" });
        return;
      }
      this.pings += 1;
      this.awaitingPong = String(this.pings);
      this.sendFrame({ ping: { nonce: this.awaitingPong } });
    }, PING_EVERY_MS);
    (this.pingTimer as unknown as { unref?: () => void }).unref?.();
  }

  private sendJoin(room: Room): void {
    const join: Record<string, unknown> = { room_id: room.id };
    if (room.lastSeq > 0) join.since_seq = room.lastSeq;
    if (room.password) join.password = room.password;
    this.sendFrame({ join });
  }

  private handle(frame: ServerFrame): void {
    this.emit("frame", frame);
    const kind = Object.keys(frame)[0];
    if (!kind) return;
    const body = frame[kind] ?? {};
    const room = typeof body.room_id === "string" ? this.rooms.get(body.room_id) : undefined;
    switch (kind) {
      case "joined":
        if (room) this.joined(room, body);
        return;
      case "ack":
        return this.acked(body);
      case "error":
        return this.failed(body, room);
      case "pong":
        if (body.nonce === this.awaitingPong) this.awaitingPong = null;
        return;
      case "left":
        if (room) {
          this.forget(room, "the server took the user out of the room");
          room.removed();
        }
        return;
      case "history":
        room?.historyArrived(body);
        return;
      default:
        if (room && TIMELINE.has(kind)) room.timeline(kind as TimelineKind, body);
        else room?.ephemeral(kind, body);
    }
  }

  private joined(room: Room, body: Record<string, unknown>): void {
    const fill = room.joinedAnswer(body);
    if (fill) this.sendFrame({ get_chat_history: fill });
    for (const call of this.pending.values()) {
      if (call.roomId === room.id) this.sendText(call.frame);
    }
  }

  private acked(body: Record<string, unknown>): void {
    const clientId = String(body.client_id ?? "");
    const call = this.pending.get(clientId);
    if (!call) return;
    this.pending.delete(clientId);
    call.resolve({ client_id: clientId, message_id: String(body.message_id ?? ""), seq: Number(body.seq) || 0 });
  }

  private failed(body: Record<string, unknown>, room: Room | undefined): void {
    const error = Object.assign(new ParleyError(String(body.code ?? "UNKNOWN"), String(body.message ?? "")), {
      roomId: String(body.room_id ?? ""),
      clientId: String(body.client_id ?? ""),
    });
    const call = error.clientId ? this.pending.get(error.clientId) : undefined;
    if (call) {
      this.pending.delete(error.clientId);
      call.reject(error);
      return;
    }
    if (room && room.failJoin(error)) {
      this.rooms.delete(room.id);
      return;
    }
    this.emit("error", error);
  }
}

/** The page's `window` events, where there is a page. */
function globalEvents(): Pick<EventTarget, "addEventListener" | "removeEventListener"> | undefined {
  const scope = globalThis as Partial<EventTarget> & { document?: unknown };
  return scope.document && scope.addEventListener && scope.removeEventListener ? (scope as EventTarget) : undefined;
}

// ---------------------------------------------------------------------------
// A room on the connection
// ---------------------------------------------------------------------------

/** Events of {@link Room}. */
export interface RoomEvents {
  /** A timeline event, once each and in `seq` order. */
  event: TimelineEvent;
  /** Typing, presence and read markers: outside the timeline, and droppable. */
  ephemeral: { kind: string; data: Record<string, unknown> };
  /** The `joined` answer, after every (re)join: online members, role, name. */
  joined: Record<string, unknown>;
  /** More was missed than one history page fills: older events are in {@link ParleyClient.history}. */
  truncated: { fromSeq: number; toSeq: number };
  /** The server took the user out of the room (kicked, banned, or the room deleted). */
  removed: void;
}

/**
 * A room joined on a {@link Connection}: its timeline events, in order and
 * once each, and the calls that change it.
 */
export class Room extends Emitter<RoomEvents> {
  /** The newest timeline `seq` delivered: a rejoin replays after it. */
  lastSeq = 0;
  /** Joined on the current socket: calls go out at once. */
  live = false;
  /** Resolves on the first `joined`, rejects if the first join fails. */
  readonly ready: Promise<Room>;
  private settle: { resolve: (room: Room) => void; reject: (err: ParleyError) => void } | null = null;
  /** Timeline events held while history fills what a rejoin missed. */
  private held: TimelineEvent[] | null = null;

  /** @internal Made by {@link Connection.join}. */
  constructor(
    private readonly connection: Connection,
    /** The room's id. */
    readonly id: string,
    /** @internal The password rejoins use. */
    readonly password: string | undefined,
  ) {
    super();
    this.ready = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    // A failed first join is also reported to whoever awaits `ready`; this
    // keeps a rejection nobody awaits from being reported as unhandled.
    this.ready.catch(() => {});
  }

  /**
   * Sends a message; resolves with its `seq` once stored. Safe to retry:
   * the same `clientId` never stores a second message.
   */
  send(
    content: string,
    options: { replyTo?: number; attachments?: string[]; clientId?: string } = {},
  ): Promise<Ack> {
    const clientId = options.clientId ?? newClientId();
    const send: Record<string, unknown> = { room_id: this.id, content, client_id: clientId };
    if (options.replyTo) send.reply_to = options.replyTo;
    if (options.attachments?.length) send.attachments = options.attachments;
    return this.connection.call(this.id, clientId, { send });
  }

  /** Replaces the text of one's own message `seq`. */
  edit(seq: number, content: string, clientId = newClientId()): Promise<Ack> {
    return this.connection.call(this.id, clientId, { edit: { room_id: this.id, seq, content, client_id: clientId } });
  }

  /** Deletes message `seq` (one's own, or as a moderator). */
  delete(seq: number, clientId = newClientId()): Promise<Ack> {
    return this.connection.call(this.id, clientId, { delete: { room_id: this.id, seq, client_id: clientId } });
  }

  /** Adds (or with `remove`, takes back) a reaction to message `seq`. */
  react(seq: number, emoji: string, remove = false, clientId = newClientId()): Promise<Ack> {
    return this.connection.call(this.id, clientId, {
      react: { room_id: this.id, seq, emoji, remove, client_id: clientId },
    });
  }

  /** Tells the other members the user is typing (droppable: `false` while disconnected). */
  typing(): boolean {
    return this.live && this.connection.sendFrame({ typing: { room_id: this.id } });
  }

  /** Moves the user's read marker to `seq` (droppable, like typing). */
  read(seq: number): boolean {
    return this.live && this.connection.sendFrame({ read: { room_id: this.id, seq } });
  }

  /** Leaves the room: the user is no longer a member. */
  leave(): void {
    this.live = false;
    this.connection.leaveRoom(this);
  }

  /** @internal The answer to a (re)join; returns the history request that fills a gap, if one is needed. */
  joinedAnswer(body: Record<string, unknown>): Record<string, unknown> | null {
    this.live = true;
    const lastSeq = Number(body.last_seq) || 0;
    const truncated = body.replay_truncated === true;
    let fill: Record<string, unknown> | null = null;
    if (this.settle) {
      // The first join: events start after what the room holds now.
      this.lastSeq = lastSeq;
      this.settle.resolve(this);
      this.settle = null;
    } else if (lastSeq > this.lastSeq && (truncated || this.lastSeq === 0)) {
      // The replay cannot cover what was missed (more than the server
      // replays, or nothing to replay after): history fills it, and what
      // arrives meanwhile waits so the order holds.
      const missed = lastSeq - this.lastSeq;
      if (missed > HISTORY_LIMIT) this.emit("truncated", { fromSeq: this.lastSeq + 1, toSeq: lastSeq - HISTORY_LIMIT });
      this.held = [];
      fill = { room_id: this.id, limit: Math.min(missed, HISTORY_LIMIT), before_seq: lastSeq + 1 };
    }
    this.emit("joined", body);
    return fill;
  }

  /** @internal A first join refused: reject `ready`. Returns whether this was a first join. */
  failJoin(error: ParleyError): boolean {
    if (!this.settle) return false;
    this.settle.reject(error);
    this.settle = null;
    return true;
  }

  /** @internal */
  timeline(kind: TimelineKind, data: Record<string, unknown>): void {
    const event = { kind, seq: Number(data.seq) || 0, data } as TimelineEvent;
    if (this.held) this.held.push(event);
    else this.deliver(event);
  }

  /** @internal */
  historyArrived(body: Record<string, unknown>): void {
    const held = this.held;
    if (!held) return;
    this.held = null;
    const messages = (Array.isArray(body.messages) ? body.messages : []) as TimelineEvent["data"][];
    const filled = messages
      .map((data) => ({ kind: "message", seq: Number(data.seq) || 0, data }) as TimelineEvent)
      .sort((a, b) => a.seq - b.seq);
    for (const event of [...filled, ...held]) this.deliver(event);
  }

  /** @internal */
  ephemeral(kind: string, data: Record<string, unknown>): void {
    this.emit("ephemeral", { kind, data });
  }

  /** @internal */
  removed(): void {
    this.live = false;
    this.emit("removed", undefined);
  }

  /** Hands an event on once: what was delivered already (a replay overlapping live events) is dropped. */
  private deliver(event: TimelineEvent): void {
    if (event.seq <= this.lastSeq) return;
    this.lastSeq = event.seq;
    this.emit("event", event);
  }
}
