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
/** What a caller should do about an error. */
export type ErrorAction = "retry" | "sign_in" | "fix_input";
/**
 * An error from the server (its gRPC status name as `code`, and the HTTP
 * status for REST calls) or from the network (`code` "NETWORK").
 */
export declare class ParleyError extends Error {
    /** The gRPC status name the server gave, or "NETWORK". */
    readonly code: string;
    /** The HTTP status of a REST answer; 0 for WebSocket errors and the network. */
    readonly status: number;
    constructor(code: string, message: string, status?: number);
    /** What to do: retry later, sign in again, or change the request. */
    get action(): ErrorAction;
}
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
    reactions: {
        emoji: string;
        count: number;
        user_ids: string[];
    }[];
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
export type TimelineKind = "message" | "message_edited" | "message_deleted" | "reaction" | "member_update" | "room_updated";
/** A timeline event: `kind` names the server frame, `data` is its body. */
export interface TimelineEvent {
    kind: TimelineKind;
    seq: number;
    data: Record<string, unknown> & {
        room_id: string;
        seq: number;
    };
}
/** A frame from the server: one key naming it, its body as the value. */
export type ServerFrame = Record<string, Record<string, unknown>>;
/** The subset of the WebSocket API the client uses (browsers, Node 22+, `ws`). */
export interface WebSocketLike {
    readonly readyState: number;
    onopen: ((event: unknown) => void) | null;
    onmessage: ((event: {
        data: unknown;
    }) => void) | null;
    onclose: ((event: {
        code: number;
        reason: string;
    }) => void) | null;
    onerror: ((event: unknown) => void) | null;
    send(data: string): void;
    close(code?: number, reason?: string): void;
}
/** How to make a WebSocket: the global `WebSocket` by default. */
export type WebSocketFactory = new (url: string, protocols?: string | string[]) => WebSocketLike;
type Listener<T> = (value: T) => void;
/** Listeners by event name; `on` returns the function that removes one. */
declare class Emitter<Events> {
    private listeners;
    /** Calls `listener` for every `event` until the returned function is called. */
    on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void;
    protected emit<K extends keyof Events>(event: K, value: Events[K]): void;
}
/** The wait before reconnect attempt `attempt` (1-based): full jitter over the upper half. */
export declare function backoff(attempt: number, random?: () => number): number;
/** A fresh `client_id`: unique per page or process, and across restarts. */
export declare function newClientId(): string;
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
export declare class ParleyClient extends Emitter<ClientEvents> {
    /** The gateway's base URL, without a trailing slash. */
    readonly server: string;
    private readonly apiKey;
    private readonly fetchImpl;
    private readonly socketImpl;
    private current;
    private renewing;
    private renewTimer;
    private readonly connections;
    constructor(options?: ClientOptions);
    /** The session now, or `null` (signed out, or signed in with an API key). */
    get session(): Session | null;
    /** Whether the client has credentials: a session or an API key. */
    get signedIn(): boolean;
    /** Creates an account (`POST /api/v1/auth/register`); it does not sign in. */
    register(username: string, password: string, email?: string): Promise<User>;
    /** Signs in with a password; the session is renewed from now on. */
    login(username: string, password: string): Promise<Session>;
    /** Ends the session on the server and here; live connections close. */
    logout(): Promise<void>;
    /** Forgets the credentials here and closes every connection, without telling the server. */
    end(): void;
    /**
     * A bearer credential usable now: the API key, or the access token,
     * renewed first when it is about to expire.
     */
    bearer(): Promise<string>;
    /**
     * Renews the access token with the refresh token (one renewal at a time:
     * a refresh token is single use). A refused refresh ends the session.
     */
    renew(): Promise<Session>;
    /**
     * An authenticated REST call under `/api/v1`: JSON in and out; a 401 is
     * answered by one renewal and one retry.
     */
    request<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
    private requestOnce;
    /**
     * Runs `call` with a bearer credential; a 401 (the token revoked or
     * expired early) is answered by one renewal and one more try.
     */
    private authorized;
    /** The signed-in user. */
    me(): Promise<User>;
    /** Creates a room; with a password it is private. */
    createRoom(name: string, password?: string): Promise<RoomInfo>;
    /** The user's rooms, latest activity first. */
    myRooms(): Promise<Record<string, unknown>[]>;
    /** The direct room with `userId`, made on first use. */
    openDirect(userId: string): Promise<RoomInfo>;
    /** A page of a room's history before `beforeSeq` (0: the newest), oldest first. */
    history(roomId: string, options?: {
        beforeSeq?: number;
        limit?: number;
    }): Promise<HistoryPage>;
    /**
     * Uploads a file as an attachment (`POST /api/v1/attachments`), streamed
     * by the gateway. In browsers progress is reported as bytes leave.
     */
    upload(data: Blob | Uint8Array, options?: UploadOptions): Promise<Attachment>;
    /** Downloads an attachment (or its thumbnail) as a streaming `Response`. */
    download(id: string, options?: {
        thumbnail?: boolean;
    }): Promise<Response>;
    /**
     * A URL of an attachment for an `<img>` or a link: it carries the current
     * access token, so it works until that token expires.
     */
    attachmentUrl(id: string, options?: {
        thumbnail?: boolean;
    }): string;
    /** Opens the live connection; it stays open, reconnecting, until closed. */
    connect(): Connection;
    /** The gateway's WebSocket URL. */
    get socketUrl(): string;
    /** Keeps new tokens; their life is counted from `issued`, before the request, so a renewal is never late. */
    private setSession;
    private scheduleRenewal;
    /** One REST call; `token` null for the calls that take none. */
    private call;
    private send;
    private uploadWithProgress;
}
/** Where the connection stands. */
export type ConnectionState = "connecting" | "online" | "reconnecting" | "closed";
/** Events of {@link Connection}. */
export interface ConnectionEvents {
    /** The state changed; `reason` says why a connection was lost or closed. */
    state: {
        state: ConnectionState;
        reason: string;
        attempt: number;
        retryInMs: number;
    };
    /** Every frame the server sent, as it came: for what the room API does not cover. */
    frame: ServerFrame;
    /** An `error` frame no pending call claimed (for example a refused `refresh`). */
    error: ParleyError & {
        roomId?: string;
        clientId?: string;
    };
}
/**
 * The live WebSocket, kept open: it reconnects with backoff and jitter,
 * rejoins every room with `since_seq`, resends unacknowledged sends with
 * their `client_id`, answers silence with a reconnect, and hands renewed
 * tokens to the server in band.
 */
export declare class Connection extends Emitter<ConnectionEvents> {
    private readonly client;
    private readonly Socket;
    private readonly onClosed;
    private socket;
    private current;
    private attempt;
    private closed;
    private reconnectTimer;
    private stableTimer;
    private pingTimer;
    private awaitingPong;
    private pings;
    private tokenUsed;
    private readonly rooms;
    /** Sends and other acknowledged frames not answered yet, in the order made. */
    private readonly pending;
    private readonly online;
    /** @internal Made by {@link ParleyClient.connect}. */
    constructor(client: ParleyClient, Socket: WebSocketFactory, onClosed: (connection: Connection) => void);
    /** Where the connection stands now. */
    get state(): ConnectionState;
    /** Whether frames go out now. */
    get isOpen(): boolean;
    /**
     * Joins a room (a password for a private one) and resolves once the server
     * answers `joined`; from then on its events arrive on the room, also
     * across reconnects. Joining a room already joined returns it.
     */
    join(roomId: string, options?: {
        password?: string;
    }): Promise<Room>;
    /** A room joined on this connection. */
    room(roomId: string): Room | undefined;
    /** Every room joined on this connection. */
    get joinedRooms(): Room[];
    /**
     * Sends a raw frame now (`false` while disconnected). The room API is
     * the safe way; this is for frames that need no guarantee (typing, read).
     */
    sendFrame(frame: Record<string, unknown>): boolean;
    private sendText;
    /**
     * Sends `frame` (whose body carries `client_id`) until the server
     * acknowledges it: it goes out now if the room is joined, else after the
     * next (re)join, and again after every reconnect until its `ack` or `error`.
     */
    call(roomId: string, clientId: string, frame: Record<string, unknown>): Promise<Ack>;
    /** Closes the connection for good; pending calls are rejected. */
    close(): void;
    /** @internal The client renewed the token: the live socket gets it in band. */
    tokenRenewed(token: string): void;
    /** @internal A room asks to leave. */
    leaveRoom(room: Room): void;
    /** Stops following `room`; its unanswered calls are rejected, as nothing would send them. */
    private forget;
    private setState;
    private stop;
    private open;
    private closedWith;
    private lost;
    /** The credentials were refused: nothing to retry. */
    private refuse;
    private startPing;
    private sendJoin;
    private handle;
    private joined;
    private acked;
    private failed;
}
/** Events of {@link Room}. */
export interface RoomEvents {
    /** A timeline event, once each and in `seq` order. */
    event: TimelineEvent;
    /** Typing, presence and read markers: outside the timeline, and droppable. */
    ephemeral: {
        kind: string;
        data: Record<string, unknown>;
    };
    /** The `joined` answer, after every (re)join: online members, role, name. */
    joined: Record<string, unknown>;
    /** More was missed than one history page fills: older events are in {@link ParleyClient.history}. */
    truncated: {
        fromSeq: number;
        toSeq: number;
    };
    /** The server took the user out of the room (kicked, banned, or the room deleted). */
    removed: void;
}
/**
 * A room joined on a {@link Connection}: its timeline events, in order and
 * once each, and the calls that change it.
 */
export declare class Room extends Emitter<RoomEvents> {
    private readonly connection;
    /** The room's id. */
    readonly id: string;
    /** @internal The password rejoins use. */
    readonly password: string | undefined;
    /** The newest timeline `seq` delivered: a rejoin replays after it. */
    lastSeq: number;
    /** Joined on the current socket: calls go out at once. */
    live: boolean;
    /** Resolves on the first `joined`, rejects if the first join fails. */
    readonly ready: Promise<Room>;
    private settle;
    /** Timeline events held while history fills what a rejoin missed. */
    private held;
    /** @internal Made by {@link Connection.join}. */
    constructor(connection: Connection, 
    /** The room's id. */
    id: string, 
    /** @internal The password rejoins use. */
    password: string | undefined);
    /**
     * Sends a message; resolves with its `seq` once stored. Safe to retry:
     * the same `clientId` never stores a second message.
     */
    send(content: string, options?: {
        replyTo?: number;
        attachments?: string[];
        clientId?: string;
    }): Promise<Ack>;
    /** Replaces the text of one's own message `seq`. */
    edit(seq: number, content: string, clientId?: string): Promise<Ack>;
    /** Deletes message `seq` (one's own, or as a moderator). */
    delete(seq: number, clientId?: string): Promise<Ack>;
    /** Adds (or with `remove`, takes back) a reaction to message `seq`. */
    react(seq: number, emoji: string, remove?: boolean, clientId?: string): Promise<Ack>;
    /** Tells the other members the user is typing (droppable: `false` while disconnected). */
    typing(): boolean;
    /** Moves the user's read marker to `seq` (droppable, like typing). */
    read(seq: number): boolean;
    /** Leaves the room: the user is no longer a member. */
    leave(): void;
    /** @internal The answer to a (re)join; returns the history request that fills a gap, if one is needed. */
    joinedAnswer(body: Record<string, unknown>): Record<string, unknown> | null;
    /** @internal A first join refused: reject `ready`. Returns whether this was a first join. */
    failJoin(error: ParleyError): boolean;
    /** @internal */
    timeline(kind: TimelineKind, data: Record<string, unknown>): void;
    /** @internal */
    historyArrived(body: Record<string, unknown>): void;
    /** @internal */
    ephemeral(kind: string, data: Record<string, unknown>): void;
    /** @internal */
    removed(): void;
    /** Hands an event on once: what was delivered already (a replay overlapping live events) is dropped. */
    private deliver;
}
export {};
