// k6 load test of POST /predict: a constant arrival rate with pass/fail thresholds.
// Not run in this repository (k6 is AGPL); for users who run k6 themselves:
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e RATE=2000 loadtest/k6/predict.js
import http from 'k6/http';
import { check } from 'k6';
import { SharedArray } from 'k6/data';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const RATE = parseInt(__ENV.RATE || '500');            // requests per second
const DURATION = __ENV.DURATION || '30s';
const INPUT_SEQ_LEN = parseInt(__ENV.INPUT_SEQ_LEN || '10');
const DATA = __ENV.DATA || '../../data/lte/PobleSec_test.csv';

// Real windows from the test data (empty cells carried forward), built once and shared by VUs.
const bodies = new SharedArray('windows', function () {
  const lines = open(DATA).trim().split('\n');
  const header = lines[0].split(',');
  const rows = lines.slice(1).map((l) => l.split(','));
  const out = [];
  for (let start = 0; start + INPUT_SEQ_LEN <= rows.length && out.length < 500; start += 7) {
    const data = {};
    header.forEach((name, j) => {
      let previous = 0;
      data[name] = rows.slice(start, start + INPUT_SEQ_LEN).map((r) => {
        if (name === 'time') return r[j];
        previous = r[j] === '' ? previous : parseFloat(r[j]);
        return previous;
      });
    });
    out.push(JSON.stringify({ data }));
  }
  return out;
});

export const options = {
  discardResponseBodies: true,
  scenarios: {
    predict: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 50,
      maxVUs: 200,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],                  // under 1% errors (429 counts as an error)
    http_req_duration: ['p(95)<50', 'p(99)<100'],    // milliseconds
    dropped_iterations: ['count<1'],                 // the generator kept the arrival rate
  },
};

export function setup() {
  const ready = http.get(`${BASE_URL}/readyz`);
  if (ready.status !== 200) throw new Error(`the server is not ready: ${ready.status} ${ready.body}`);
}

export default function () {
  const body = bodies[Math.floor(Math.random() * bodies.length)];
  const res = http.post(`${BASE_URL}/predict`, body, { headers: { 'Content-Type': 'application/json' } });
  check(res, { 'status is 200': (r) => r.status === 200 });
}
