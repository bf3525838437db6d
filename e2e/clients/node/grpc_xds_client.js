// A second independent xDS client: Node's @grpc/grpc-js-xds dials xds:///NAME and makes N calls of
// /test.Echo/Who (the backends of e2e/clients/grpc_xds.py answer their ID), then prints one JSON line
// {"counts": {"ID": n, ...}, "errors": {"...": n}}. Usage: GRPC_XDS_BOOTSTRAP=FILE node grpc_xds_client.js TARGET N
// Needs @grpc/grpc-js and @grpc/grpc-js-xds (e2e/clients/node/package.json; NODE_PATH may point at them).
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const [target, n] = [process.argv[2], parseInt(process.argv[3] || '10', 10)];
const raw = { serialize: (b) => b, deserialize: (b) => b };
const client = new grpc.Client(target, grpc.credentials.createInsecure());
const counts = {};
const errors = {};

function once() {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + 5000);
    client.makeUnaryRequest('/test.Echo/Who', raw.serialize, raw.deserialize, Buffer.alloc(0),
      { deadline, waitForReady: true }, (err, value) => {
        if (err) {
          const k = `${grpc.status[err.code]}: ${err.details}`;
          errors[k] = (errors[k] || 0) + 1;
        } else {
          const id = value.toString();
          counts[id] = (counts[id] || 0) + 1;
        }
        resolve();
      });
  });
}

(async () => {
  for (let i = 0; i < n; i++) {
    await once();
    if (Object.values(errors).reduce((a, b) => a + b, 0) >= 5) break;
  }
  console.log(JSON.stringify({ counts, errors }));
  client.close();
  process.exit(0);
})();
