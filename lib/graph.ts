/**
 * Op programs: model code is written once, as generator functions that yield native op calls, and
 * run either synchronously (`runSync`) or as a chain of short native jobs off the main thread
 * (`runAsync`), so long work never blocks the event loop and there is one implementation of
 * every model.
 *
 * Programs call the typed wrappers of lib/ops (only those name native ops, through `call`):
 *
 * ```ts
 * function* mlp(x: Tensor): Program<Tensor> {
 *   const h = yield* linalg.linear(x, w1, b1);
 *   return yield* nn.gelu(h);
 * }
 * const y = runSync(mlp(x));          // blocks the caller
 * const z = await runAsync(mlp(x));   // one libuv job per op
 * ```
 */
import { runOp, runOpAsync, type Attrs, type NativeTensor } from './native.js';
import { Tensor } from './tensor.js';

/** One native op call, as yielded by a program. */
export interface OpRequest {
  readonly op: string;
  readonly inputs: readonly (Tensor | null | undefined)[];
  readonly attrs?: Attrs;
}

/** A program: yields op requests, receives each op's outputs, returns T. */
export type Program<T> = Generator<OpRequest, T, Tensor[]>;

/**
 * The pseudo-op of `release`: the runner disposes these tensors at once, unless an observer (a
 * recording autograd tape) is attached, in which case they stay alive for the backward pass.
 */
export const RELEASE = '__release';

/**
 * Declares that the program no longer needs these intermediates, so their memory is freed (and
 * recycled by the native allocation cache) now rather than at garbage collection. Only release
 * tensors the program itself produced.
 */
export function* release(...tensors: (Tensor | null | undefined)[]): Program<void> {
  yield { op: RELEASE, inputs: tensors };
}

/** Yields one op call and returns all its outputs. */
export function* call(op: string, inputs: readonly (Tensor | null | undefined)[], attrs?: Attrs): Program<Tensor[]> {
  return yield { op, inputs, attrs };
}

/** Yields one op call and returns its first output. */
export function* call1(op: string, inputs: readonly (Tensor | null | undefined)[], attrs?: Attrs): Program<Tensor> {
  const out = yield { op, inputs, attrs };
  return out[0]!;
}

function natives(inputs: readonly (Tensor | null | undefined)[]): (NativeTensor | null)[] {
  return inputs.map((t) => (t ? t.native : null));
}
function wrap(out: NativeTensor[]): Tensor[] {
  return out.map((t) => (t ? new Tensor(t) : (null as unknown as Tensor)));
}

/** Handles a `release` request (disposing unless a tape observes); false for real ops. */
function released(req: OpRequest, observe: OpObserver | undefined): boolean {
  if (req.op !== RELEASE) return false;
  if (!observe) for (const t of req.inputs) if (t && !t.disposed) t.dispose();
  return true;
}

/** Observes every op a program runs (used by autograd and profiling). */
export type OpObserver = (req: OpRequest, outputs: Tensor[]) => void;

/** Runs a program to completion on the calling thread. */
export function runSync<T>(program: Program<T>, observe?: OpObserver): T {
  let step = program.next();
  while (!step.done) {
    const req = step.value;
    if (released(req, observe)) {
      step = program.next([]);
      continue;
    }
    let out: Tensor[];
    try {
      out = wrap(runOp(req.op, natives(req.inputs), req.attrs));
    } catch (err) {
      step = program.throw(err);
      continue;
    }
    observe?.(req, out);
    step = program.next(out);
  }
  return step.value;
}

/** Runs a program with every op as its own native job on the libuv pool. */
export async function runAsync<T>(program: Program<T>, observe?: OpObserver): Promise<T> {
  let step = program.next();
  while (!step.done) {
    const req = step.value;
    if (released(req, observe)) {
      step = program.next([]);
      continue;
    }
    let out: Tensor[];
    try {
      out = wrap(await runOpAsync(req.op, natives(req.inputs), req.attrs));
    } catch (err) {
      step = program.throw(err);
      continue;
    }
    observe?.(req, out);
    step = program.next(out);
  }
  return step.value;
}

/** Runs a single op synchronously and returns its outputs (eager convenience). */
export function op(name: string, inputs: readonly (Tensor | null | undefined)[], attrs?: Attrs): Tensor[] {
  return wrap(runOp(name, natives(inputs), attrs));
}
/** Runs a single op synchronously and returns its first output. */
export function op1(name: string, inputs: readonly (Tensor | null | undefined)[], attrs?: Attrs): Tensor {
  return op(name, inputs, attrs)[0]!;
}
