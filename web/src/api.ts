// The public HTTP API of the auth service, on this page's own origin.
import type { Session, SignupRequest, UserPublic } from "./generated/protocol";

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

async function call<T>(method: string, path: string, body?: unknown, token?: string): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (token) headers.authorization = `Bearer ${token}`;
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "omit",
      cache: "no-store",
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
  } catch {
    throw new ApiError("Cannot reach the server; check your connection and try again.", 0);
  }
  if (response.status === 204) return undefined as T;
  const data: unknown = await response.json().catch(() => null);
  if (!response.ok) {
    const detail =
      data && typeof data === "object" && "detail" in data && typeof data.detail === "string"
        ? data.detail
        : `the server answered ${response.status}`;
    throw new ApiError(sentence(detail), response.status);
  }
  return data as T;
}

function sentence(text: string): string {
  const trimmed = text.trim();
  const first = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(first) ? first : `${first}.`;
}

export interface LoginAnswer extends Session {
  /** Added by issue 13; absent until then. */
  device_id?: string;
  device_queue?: string;
}

export const signUp = (body: SignupRequest): Promise<UserPublic> =>
  call("POST", "/v1/users", body);

export const logIn = (username: string, password: string): Promise<LoginAnswer> =>
  call("POST", "/v1/sessions", { username, password });

export const logOut = (token: string): Promise<void> =>
  call("DELETE", "/v1/sessions/current", undefined, token);

/** A user's public profile, or null when there is no such user. */
export async function lookUp(username: string): Promise<UserPublic | null> {
  try {
    return await call<UserPublic>("GET", `/v1/users/${encodeURIComponent(username)}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}
