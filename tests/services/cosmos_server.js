// The npm Cosmos DB emulator (@vercel/cosmosdb-server), started as its own CLI starts it but
// with HTTP keep-alive on: its CLI closes the connection after every response, so each
// request paid a new TCP and TLS handshake (about 23 ms here) where the service and its SDK
// keep connections open.  Usage: node cosmos_server.js PORT HOST
"use strict";
const { createHttpsServer } = require("@vercel/cosmosdb-server");

const [port, host] = process.argv.slice(2);
const server = createHttpsServer({ keepAlive: true }).listen(Number(port), host, () => {
  console.log(`Ready to accept HTTPS connections at ${host}:${server.address().port}`);
});
