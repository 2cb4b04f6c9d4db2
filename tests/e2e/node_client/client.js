#!/usr/bin/env node
// Cross-language check of the Router contract: a Node client built from the .proto file alone.
//
//   node client.js <path/to/router.proto> <host:port>
//
// Calls Route for one fix_bug task, RouteStream for five tasks, and Route once with an invalid
// priority, then prints one JSON object on stdout:
//   {"route": <Decision>, "stream": [<Decision>, ...], "bad": {"code": <int>, "details": <str>}}
// Any unexpected error exits non-zero with the gRPC code and details on stderr.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEADLINE_MS = 10000;
const STREAM_TASKS = ['fix_bug', 'check_links', 'analyze_logs', 'simple_query', 'research_market'];

function usage() {
  process.stderr.write('usage: node client.js <router.proto> <host:port>\n');
  process.exit(2);
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function loadRouter(protoPath) {
  const file = path.resolve(protoPath);
  // The file sits at <root>/routing_sidecar/v1/router.proto; its imports are relative to <root>.
  // google/protobuf/*.proto are not on disk: proto-loader (protobufjs) bundles them.
  const root = path.resolve(path.dirname(file), '..', '..');
  const definition = protoLoader.loadSync(file, {
    includeDirs: [root],
    keepCase: true,
    enums: String,
    longs: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(definition);
  return pkg.routing_sidecar.v1.Router;
}

function request(taskId, taskType, extra) {
  return {
    task_id: taskId,
    task_type: taskType,
    priority: 50,
    estimated_input_tokens: 2000,
    max_output_tokens: 1000,
    ...extra,
  };
}

function route(client, req) {
  return new Promise((resolve, reject) => {
    client.Route(req, { deadline: deadline() }, (err, decision) => {
      if (err) reject(err);
      else resolve(decision);
    });
  });
}

function routeStream(client, reqs) {
  return new Promise((resolve, reject) => {
    const decisions = [];
    let failed = false;
    const call = client.RouteStream({ deadline: deadline() });
    call.on('data', (d) => decisions.push(d));
    call.on('error', (err) => {
      failed = true;
      reject(err);
    });
    call.on('end', () => {
      if (!failed) resolve(decisions);
    });
    for (const r of reqs) call.write(r);
    call.end();
  });
}

function describe(err) {
  if (err && typeof err.code === 'number') {
    const name = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) || '?';
    return `gRPC error: code=${err.code} (${name}) details=${JSON.stringify(err.details)}`;
  }
  return `error: ${err && err.stack ? err.stack : err}`;
}

async function main() {
  const [protoPath, target] = process.argv.slice(2);
  if (!protoPath || !target) usage();

  const Router = loadRouter(protoPath);
  const client = new Router(target, grpc.credentials.createInsecure());
  const run = `node-${process.pid}-${Date.now()}`;
  try {
    const routed = await route(
      client,
      request(`${run}-route`, 'fix_bug', { labels: { project: 'alpha' } }),
    );

    const stream = await routeStream(
      client,
      STREAM_TASKS.map((t, i) => request(`${run}-s${i}`, t)),
    );

    let bad;
    try {
      await route(client, request(`${run}-bad`, 'fix_bug', { priority: 300 }));
    } catch (err) {
      if (typeof err.code !== 'number') throw err;
      bad = { code: err.code, details: err.details };
    }
    if (bad === undefined) {
      throw new Error('Route with priority 300 succeeded; expected INVALID_ARGUMENT');
    }

    process.stdout.write(`${JSON.stringify({ route: routed, stream, bad })}\n`);
  } finally {
    client.close();
  }
}

main().catch((err) => {
  process.stderr.write(`${describe(err)}\n`);
  process.exitCode = 1;
});
