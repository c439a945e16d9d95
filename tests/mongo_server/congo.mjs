// A MongoDB-wire server for federator's integration tests: CongoDB (from the npm package
// @push.rocks/smartmongo@2.2.0, unpacked into ./vendor by install.sh), in memory, on loopback.
// Usage: PORT=27018 node congo.mjs   — prints "ready <port>" once it accepts connections;
// stops on SIGTERM/SIGINT.
import { CongoServer } from './vendor/package/dist_ts/congodb/index.js';

const port = Number(process.env.PORT || 27017);
const server = new CongoServer({ port, host: '127.0.0.1', storage: 'memory' });
await server.start();
console.log(`ready ${port}`);
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, async () => {
    try {
      await server.stop();
    } finally {
      process.exit(0);
    }
  });
}
