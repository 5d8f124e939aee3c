// Child process of test/state-kill.test.ts: resumes from the checkpoint at argv[2] (if any) and
// saves checkpoints in a loop, each one internally consistent (every tensor encodes the step in
// its meta), printing "saved <step>" after each save returns, until it is killed.
import { Tensor } from '../lib/tensor.js';
import { loadTrainingState, saveTrainingState } from '../lib/train/state.js';

const file = process.argv[2]!;
const n = Number(process.argv[3] ?? 262144);

async function main(): Promise<void> {
  let step = 0;
  try {
    const s = await loadTrainingState(file);
    step = (s.meta.step as number) + 1;
  } catch (e) {
    if ((e as { code?: string }).code !== 'ERR_NOT_FOUND') throw e;
  }
  process.stdout.write(`start ${step}\n`);
  for (;;) {
    const w = new Float32Array(n);
    for (let i = 0; i < n; ++i) w[i] = step + i / n;
    const m = new BigInt64Array(1024).fill(BigInt(step) * 3n);
    const tensors = new Map<string, Tensor>([
      ['model.w', Tensor.from(w, [n])],
      ['opt.exp_avg.model.w', Tensor.from(m, [1024])],
    ]);
    await saveTrainingState(file, { tensors, meta: { step, note: `step ${step}` } });
    process.stdout.write(`saved ${step}\n`);
    ++step;
  }
}

main().catch((e) => {
  process.stderr.write(`child failed: ${(e as Error).stack}\n`);
  process.exit(3);
});
