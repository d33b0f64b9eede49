// Calls Parley's gRPC services over gRPC-Web, as a browser application
// would, with Connect's gRPC-Web transport (HTTP/1.1) and message types
// built at run time from Parley's descriptor set (no generated code).
//
// Usage: node calls.mjs <descriptor set> <auth base URL> <user base URL> <username> <password>
// Prints one JSON object with what each call answered; exits 1 if a call
// failed in a way the script did not expect.
import { readFileSync } from "node:fs";
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";

const [descriptors, authUrl, userUrl, username, password] = process.argv.slice(2);
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptors)));
const transport = (baseUrl) => createGrpcWebTransport({ baseUrl, httpVersion: "1.1" });
const auth = createClient(registry.getService("parley.auth.v1.AuthService"), transport(authUrl));
const users = createClient(registry.getService("parley.user.v1.UserService"), transport(userUrl));

const out = {};
try {
  // Unary, and an error with its code.
  const registered = await auth.register({ username, password });
  out.registered = registered.user.username;
  try {
    await auth.login({ username, password: "not the password" });
    out.wrong_password = "OK";
  } catch (err) {
    out.wrong_password = Code[ConnectError.from(err).code];
  }
  const login = await auth.login({ username, password });
  const headers = { authorization: `Bearer ${login.tokens.accessToken}` };

  // With the token in the metadata.
  const me = await users.getUser({ id: registered.user.id }, { headers });
  out.get_user = me.user.username;

  // A server stream.
  out.list_users = [];
  for await (const page of users.listUsers({ limit: 50, filter: username }, { headers })) {
    out.list_users.push(...page.users.map((u) => u.username));
  }
} catch (err) {
  out.error = String(err);
  console.log(JSON.stringify(out));
  process.exit(1);
}
console.log(JSON.stringify(out));
