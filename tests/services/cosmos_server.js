// The npm Cosmos DB emulator (@vercel/cosmosdb-server), started as its own CLI starts it but
// with HTTP keep-alive on: its CLI closes the connection after every response, so each
// request paid a new TCP and TLS handshake (about 23 ms here) where the service and its SDK
// keep connections open.  Usage: node cosmos_server.js PORT HOST
"use strict";
const readDocument = require("@vercel/cosmosdb-server/lib/handler/read-document");
const partitionOf = require("@vercel/cosmosdb-server/lib/utils/get-partition-from-header");

// A point read of a missing document in a partitioned container: the emulator compares the
// document's partition key before it checks that the document exists, throws, and answers
// 500.  The service answers 404, as the emulator itself does once past that check.
const read = readDocument.default;
readDocument.default = (account, req, res, params) => {
  const collection = account.database(params.dbId).collection(params.collId);
  const key = partitionOf.parsePartitionKey(partitionOf.default(req), params.docId);
  if (collection.read() && !collection.document(params.docId, key).read()) {
    res.statusCode = 404;
    return { code: "NotFound", message: "Entity with the specified id does not exist in the system.," };
  }
  return read(account, req, res, params);
};
// Loaded after the patch: its routes take the handler when they load.
const { createHttpsServer } = require("@vercel/cosmosdb-server");

const [port, host] = process.argv.slice(2);
const server = createHttpsServer({ keepAlive: true }).listen(Number(port), host, () => {
  console.log(`Ready to accept HTTPS connections at ${host}:${server.address().port}`);
});
