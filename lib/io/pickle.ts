/**
 * A restricted Python unpickler: it rebuilds data (dicts, lists, tuples, numbers, strings, bytes)
 * and never runs code. A pickle can only name a global (a Python callable or class); this module
 * resolves each named global through a caller-supplied allowlist. The policy for the others is the
 * same everywhere:
 * - a global that executes code or reaches the system (`os.system`, `subprocess.*`,
 *   `builtins.eval` / `exec` / `getattr` / `__import__` / `open`, ...; see `isCodeExecutionGlobal`)
 *   refuses the whole pickle with `ERR_UNSAFE_PICKLE`, whatever the options;
 * - any other unknown global becomes an inert placeholder (`UnknownGlobal`, and `PickleObject` when
 *   the pickle calls it), reported through `onUnknownGlobal`; `unknownGlobals: 'refuse'` refuses
 *   those too.
 *
 * Every pickle is read under explicit budgets (`PickleLimits`): opcodes, stack and memo entries,
 * nesting depth of the result, digits of integers, and the elements the allowed callables may copy.
 * Past a budget the pickle is refused with `ERR_BAD_FILE` naming the limit; no operation costs more
 * than linear time or memory in the pickle's size.
 *
 * Python values map to JS as: dict -> Map, list -> Array, tuple -> frozen Array, int -> number
 * (bigint beyond 2^53), float -> number, str -> string, bytes -> Uint8Array, None -> null,
 * bool -> boolean, set/frozenset -> Set.
 */
import { MergeVQError, checkKeys, optionKeys } from '../errors.js';

/** What an allowed callable may use while it builds its value. */
export interface PickleCallContext {
  /** Counts `units` (elements or bytes the callable copies) against `PickleLimits.maxCopy`. */
  charge(units: number): void;
}

/** A global the allowlist resolved: calling it is a pure JS function of the pickled arguments. */
export class PickleCallable {
  constructor(
    /** `module.name` as the pickle named it. */
    readonly qualname: string,
    /**
     * Builds the value from the arguments tuple (REDUCE / NEWOBJ). A callable that copies its
     * arguments charges the copied elements to `ctx` before copying.
     */
    readonly call: (args: readonly unknown[], ctx: PickleCallContext) => unknown,
  ) {}
}

/** Budgets of one `unpickle` call; past any of them the pickle is refused with `ERR_BAD_FILE`. */
export interface PickleLimits {
  /** Opcodes executed. */
  maxOps: number;
  /** Values on the stack plus open MARKs. */
  maxStack: number;
  /** Memo entries. */
  maxMemo: number;
  /** Nesting depth of containers (lists, tuples, dicts, sets, placeholders) in the result. */
  maxDepth: number;
  /** Decimal digits of a text INT/LONG; binary LONG1/LONG4 may hold as many bits. */
  maxIntDigits: number;
  /**
   * Elements (or bytes) the allowed callables may copy in all (`dict(items)`, `list(x)`, bytes
   * from `_codecs.encode`, ...). Default: 4 per byte of pickle plus 1 Mi, so that memo references
   * cannot multiply the pickle's size.
   */
  maxCopy: number;
  /**
   * Estimated bytes of the containers the pickle builds (a dict, set or placeholder counts 200, a
   * list or tuple 48, each element or item 8 or 16 more). Default: 64 MiB plus 16 per byte of
   * pickle, so that memory stays a bounded multiple of the pickle's size.
   */
  maxObjectBytes: number;
}
const PICKLE_LIMIT_KEYS = optionKeys<PickleLimits>()([
  'maxOps',
  'maxStack',
  'maxMemo',
  'maxDepth',
  'maxIntDigits',
  'maxCopy',
  'maxObjectBytes',
]);

/** The default budgets (`maxCopy` and `maxObjectBytes` are computed from the pickle's size). */
export const DEFAULT_PICKLE_LIMITS: Readonly<Omit<PickleLimits, 'maxCopy' | 'maxObjectBytes'>> = Object.freeze({
  maxOps: 64 * 1024 * 1024,
  maxStack: 1024 * 1024,
  maxMemo: 4 * 1024 * 1024,
  maxDepth: 256,
  maxIntDigits: 4300,
});

/** Modules any of whose globals can run code or reach the system (the prefix covers submodules). */
const CODE_MODULES = [
  'os',
  'posix',
  'nt',
  'posixpath',
  'ntpath',
  'subprocess',
  'sys',
  'shutil',
  'socket',
  'pty',
  'commands',
  'popen2',
  'platform',
  'importlib',
  'imp',
  'pkgutil',
  'runpy',
  'code',
  'codeop',
  'ctypes',
  'marshal',
  'pickle',
  '_pickle',
  'cPickle',
  'pickletools',
  'copyreg',
  'copy_reg',
  'dill',
  'cloudpickle',
  'joblib',
  'multiprocessing',
  'threading',
  '_thread',
  'thread',
  'asyncio',
  'concurrent',
  'signal',
  'webbrowser',
  'timeit',
  'pdb',
  'bdb',
  'trace',
  'profile',
  'cProfile',
  'inspect',
  'types',
  'ast',
  'gc',
  'io',
  '_io',
  'tempfile',
  'glob',
  'fileinput',
  'zipimport',
  'http',
  'urllib',
  'urllib2',
  'ftplib',
  'smtplib',
  'telnetlib',
  'requests',
  'sqlite3',
  'shelve',
  'dbm',
  'ensurepip',
  'venv',
  'distutils',
  'setuptools',
  'pip',
  'IPython',
  'operator',
  '_operator',
  'functools',
  'itertools',
  'torch.hub',
  'torch.jit',
  'torch.package',
  'torch.serialization',
  'torch._C',
  'torch.ops',
  'torch.utils.cpp_extension',
  'numpy.lib.npyio',
  'numpy.f2py',
  'numpy.distutils',
  'numpy.testing',
  'yaml',
  'jinja2',
];

/** Builtins that evaluate code, import modules, reach attributes by name or open files. */
const CODE_BUILTINS = new Set([
  'eval',
  'exec',
  'execfile',
  'compile',
  '__import__',
  'getattr',
  'setattr',
  'delattr',
  'globals',
  'locals',
  'vars',
  'open',
  'file',
  'input',
  'raw_input',
  'breakpoint',
  'apply',
  'reload',
  'help',
  'exit',
  'quit',
  'memoryview',
  'classmethod',
  'staticmethod',
  'property',
  'super',
  'type',
  'object',
  '__build_class__',
  '__loader__',
  '__spec__',
]);

/** Single globals outside those modules that load or run other pickles or code. */
const CODE_GLOBALS = new Set([
  'torch.load',
  'torch.storage._load_from_bytes',
  'numpy.load',
  'numpy.loads',
  'pandas.read_pickle',
]);

/**
 * Whether a global can execute code or reach the system when called: globals of modules such as
 * `os`, `posix`, `nt`, `subprocess`, `sys`, `importlib`, `ctypes`, `pickle`, `operator`,
 * `functools`, the code-related builtins (`eval`, `exec`, `compile`, `__import__`, `getattr`,
 * `open`, ...) and loaders of nested pickles (`torch.load`, ...). Such a pickle is always refused.
 */
export function isCodeExecutionGlobal(module: string, name: string): boolean {
  const m = module === '__builtin__' ? 'builtins' : module;
  if (m === 'builtins' || m === '__main__.__builtins__') return CODE_BUILTINS.has(name) || name.startsWith('__');
  if (CODE_GLOBALS.has(`${m}.${name}`)) return true;
  // Names are matched as written and after folding case (Windows module names are not case-sensitive).
  const lower = m.toLowerCase();
  return CODE_MODULES.some(
    (c) => m === c || m.startsWith(`${c}.`) || lower === c.toLowerCase() || lower.startsWith(`${c.toLowerCase()}.`),
  );
}

/**
 * A short, bounded description of an unpickled value for messages and names: at most about
 * `budget` characters, in time proportional to `budget` whatever the value's size or sharing.
 */
export function describePickled(v: unknown, budget = 120): string {
  let left = budget;
  const walk = (x: unknown, depth: number): string => {
    left--;
    if (left <= 0 || depth > 16) return '...';
    if (typeof x === 'string')
      return x.length > left ? `${JSON.stringify(x.slice(0, Math.max(0, left)))}...` : JSON.stringify(x);
    if (typeof x === 'number' || typeof x === 'bigint' || typeof x === 'boolean') return String(x);
    if (x === null || x === undefined) return 'None';
    if (x instanceof Uint8Array) return `bytes(${x.byteLength})`;
    const items = (it: Iterable<unknown>, open: string, close: string): string => {
      const parts: string[] = [];
      for (const e of it) {
        if (left <= 0) {
          parts.push('...');
          break;
        }
        const s = walk(e, depth + 1);
        left -= s.length;
        parts.push(s);
      }
      return `${open}${parts.join(', ')}${close}`;
    };
    if (Array.isArray(x)) return items(x, Object.isFrozen(x) ? '(' : '[', Object.isFrozen(x) ? ')' : ']');
    if (x instanceof Set) return items(x, '{', '}');
    if (x instanceof Map) return `dict(${x.size})`;
    if (x instanceof PickleObject) return `<${x.global}>`;
    if (x instanceof UnknownGlobal) return `<global ${x.qualname}>`;
    if (x instanceof PickleCallable) return `<global ${x.qualname}>`;
    const name = (x as object).constructor?.name;
    return `<${name ?? 'object'}>`;
  };
  return walk(v, 0);
}

/**
 * A global that is not on the allowlist, kept as inert data when `skipUnknownGlobals` is set.
 * Calling it in the pickle yields a `PickleObject`; nothing is ever executed.
 */
export class UnknownGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
  get qualname(): string {
    return `${this.module}.${this.name}`;
  }
}

/** The inert result of calling an `UnknownGlobal`: its arguments plus whatever the pickle added. */
export class PickleObject {
  /** State from BUILD, if any. */
  state: unknown = undefined;
  /** Key/value pairs added by SETITEM(S) (dict subclasses). */
  readonly items: [unknown, unknown][] = [];
  /** Values added by APPEND(S) (list subclasses). */
  readonly list: unknown[] = [];
  constructor(
    readonly global: string,
    readonly args: readonly unknown[],
  ) {}
}

/** Options of `unpickle`. */
export interface UnpickleOptions {
  /**
   * Resolves a global named by the pickle. Return the value it stands for (a `PickleCallable` for
   * things the pickle may call, any other value for data such as dtype markers), or `undefined`
   * when it is not on the allowlist.
   */
  resolveGlobal: (module: string, name: string) => unknown;
  /** Resolves a persistent id (BINPERSID); without it, persistent ids are an error. */
  persistentLoad?: (pid: unknown) => unknown;
  /**
   * What becomes of a global that is neither allowed nor a code-execution global:
   * `'placeholder'` (default) an inert `UnknownGlobal`, `'refuse'` an `ERR_UNSAFE_PICKLE` error.
   * Code-execution globals are refused either way.
   */
  unknownGlobals?: 'placeholder' | 'refuse';
  /**
   * @deprecated Use `unknownGlobals`. `false` is `unknownGlobals: 'refuse'`, `true` the default.
   */
  skipUnknownGlobals?: boolean;
  /** Called once per distinct unknown global that became a placeholder (`module.name`). */
  onUnknownGlobal?: (qualname: string) => void;
  /** Budgets (defaults: `DEFAULT_PICKLE_LIMITS`). */
  limits?: Partial<PickleLimits>;
  /** A name for the source in error messages. */
  label?: string;
}
const UNPICKLE_KEYS = optionKeys<UnpickleOptions>()([
  'resolveGlobal',
  'persistentLoad',
  'unknownGlobals',
  'skipUnknownGlobals',
  'onUnknownGlobal',
  'limits',
  'label',
]);

/**
 * Thrown (as an `ERR_BAD_FILE` MergeVQError) when the bytes end before the pickle's STOP, so that
 * a reader of a stream of pickles can tell "read more" from "corrupt".
 */
export class PickleTruncatedError extends MergeVQError {
  constructor(message: string) {
    super(message, 'ERR_BAD_FILE');
    this.name = 'MergeVQError';
  }
}

/** How an `UnpickleOptions.unknownGlobals` / `skipUnknownGlobals` pair resolves. */
export function unknownGlobalsPolicy(o: {
  unknownGlobals?: unknown;
  skipUnknownGlobals?: unknown;
}): 'placeholder' | 'refuse' {
  if (o.unknownGlobals !== undefined) {
    if (o.unknownGlobals !== 'placeholder' && o.unknownGlobals !== 'refuse')
      throw new TypeError(`unknownGlobals must be 'placeholder' or 'refuse', got ${String(o.unknownGlobals)}`);
    return o.unknownGlobals;
  }
  return o.skipUnknownGlobals === false ? 'refuse' : 'placeholder';
}

/** Parses pickle bytes (protocols 0 to 5, without out-of-band buffers) into JS values. */
export function unpickle(data: Uint8Array, opts: UnpickleOptions): unknown {
  return parse(data, 0, opts, 'unpickle options').value;
}

/**
 * Parses one pickle starting at byte `start` of `data`; returns its value and the offset just
 * past its STOP opcode (files such as the legacy torch.save format hold several pickles in a row).
 * Running out of bytes before STOP throws a `PickleTruncatedError`.
 */
export function unpickleAt(data: Uint8Array, start: number, opts: UnpickleOptions): { value: unknown; end: number } {
  return parse(data, start, opts, 'unpickleAt options');
}

/** {@link unpickleAt}, naming the entry point `name` in an unknown-option error. */
function parse(data: Uint8Array, start: number, opts: UnpickleOptions, name: string): { value: unknown; end: number } {
  checkKeys(name, opts, UNPICKLE_KEYS);
  checkKeys(`${name}.limits`, opts.limits, PICKLE_LIMIT_KEYS);
  const label = opts.label ?? '<pickle>';
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const bad = (msg: string): never => {
    throw new MergeVQError(`${label}: invalid pickle: ${msg}`, 'ERR_BAD_FILE');
  };
  const lim: PickleLimits = {
    ...DEFAULT_PICKLE_LIMITS,
    maxCopy: 4 * (data.byteLength - start) + (1 << 20),
    maxObjectBytes: (64 << 20) + 16 * (data.byteLength - start),
    ...(opts.limits ?? {}),
  };
  let objectBytes = 0;
  const charge = (n: number) => {
    objectBytes += n;
    if (objectBytes > lim.maxObjectBytes)
      bad(`the values would take more than ${lim.maxObjectBytes} bytes (limit maxObjectBytes)`);
  };
  const made = <T>(v: T): T => {
    if (Array.isArray(v)) charge(48 + 8 * v.length);
    else if (v instanceof Map || v instanceof Set) charge(200 + 16 * v.size);
    else if (v instanceof Uint8Array) charge(96 + v.byteLength);
    else charge(200);
    return v;
  };
  const policy = unknownGlobalsPolicy(opts);
  const reported = new Set<string>();
  let copied = 0;
  const ctx: PickleCallContext = {
    charge(units: number) {
      copied += units;
      if (!(copied <= lim.maxCopy))
        bad(`the allowed callables would copy more than ${lim.maxCopy} elements (limit maxCopy)`);
    },
  };
  const maxIntBytes = Math.ceil(lim.maxIntDigits / 2.4);
  let ops = 0;
  let pos = start;
  const stack: unknown[] = [];
  const marks: number[] = [];
  const memo = new Map<number, unknown>();

  const need = (n: number, what: string): number => {
    if (!Number.isSafeInteger(n) || n < 0) bad(`${what} of ${n} bytes at byte ${pos}`);
    if (pos + n > data.byteLength)
      throw new PickleTruncatedError(
        `${label}: invalid pickle: ${what} of ${n} bytes at byte ${pos} runs past the end (${data.byteLength} bytes)`,
      );
    const p = pos;
    pos += n;
    return p;
  };
  const u8 = () => data[need(1, 'u8')]!;
  const u16 = () => view.getUint16(need(2, 'u16'), true);
  const u32 = () => view.getUint32(need(4, 'u32'), true);
  const u64 = () => {
    const v = view.getBigUint64(need(8, 'u64'), true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) bad(`length ${v} is too large`);
    return Number(v);
  };
  const bytes = (n: number, what: string) => data.subarray(need(n, what), pos);
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const str = (n: number) => {
    try {
      return utf8.decode(bytes(n, 'string'));
    } catch (e) {
      if (e instanceof MergeVQError) throw e;
      return bad(`string at byte ${pos - n} is not valid UTF-8`);
    }
  };
  const latin1 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');
  const line = () => {
    const lineStart = pos;
    const end = data.indexOf(0x0a, pos);
    if (end < 0)
      throw new PickleTruncatedError(`${label}: invalid pickle: unterminated text line at byte ${lineStart}`);
    pos = end + 1;
    return latin1(data.subarray(lineStart, end));
  };
  const pop = (): unknown => {
    if (stack.length === 0 || (marks.length > 0 && stack.length <= marks[marks.length - 1]!))
      bad(`stack underflow at byte ${pos}`);
    return stack.pop();
  };
  const top = (): unknown => {
    if (stack.length === 0 || (marks.length > 0 && stack.length <= marks[marks.length - 1]!))
      bad(`stack underflow at byte ${pos}`);
    return stack[stack.length - 1];
  };
  const popMark = (): unknown[] => {
    const m = marks.pop();
    if (m === undefined) bad(`no MARK on the stack at byte ${pos}`);
    return stack.splice(m!);
  };
  const memoGet = (i: number) => {
    if (!memo.has(i)) bad(`memo key ${i} was never stored (byte ${pos})`);
    return memo.get(i);
  };
  const memoPut = (i: number) => {
    if (!memo.has(i) && memo.size >= lim.maxMemo) bad(`more than ${lim.maxMemo} memo entries (limit maxMemo)`);
    memo.set(i, top());
  };
  const intFrom = (v: bigint): number | bigint =>
    v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  const longLE = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    if (b.length > maxIntBytes) bad(`integer of ${b.length} bytes (limit maxIntDigits = ${lim.maxIntDigits} digits)`);
    // One hex string and one parse: linear in the length (a shift per byte would be quadratic).
    const hex = Buffer.from(b).reverse().toString('hex');
    let v = BigInt(`0x${hex}`);
    if (b[b.length - 1]! & 0x80) v -= 1n << BigInt(8 * b.length);
    return intFrom(v);
  };
  const decimal = (s: string, what: string): number | bigint => {
    if (!/^[+-]?\d+$/.test(s)) bad(`${what} ${describePickled(s, 40)}`);
    if (s.length > lim.maxIntDigits + 1)
      bad(`${what} of ${s.length} digits (limit maxIntDigits = ${lim.maxIntDigits})`);
    return intFrom(BigInt(s));
  };
  const resolve = (module: string, name: string): unknown => {
    const shown = `${describePickled(module, 80).replace(/^"|"$/g, '')}.${describePickled(name, 80).replace(/^"|"$/g, '')}`;
    if (isCodeExecutionGlobal(module, name)) {
      throw new MergeVQError(
        `${label}: refusing to load: the pickle names the global ${shown}, which can execute code (nothing was run)`,
        'ERR_UNSAFE_PICKLE',
      );
    }
    const v = opts.resolveGlobal(module, name);
    if (v !== undefined) return v;
    if (policy === 'placeholder') {
      const g = new UnknownGlobal(module, name);
      if (!reported.has(g.qualname)) {
        reported.add(g.qualname);
        opts.onUnknownGlobal?.(g.qualname);
      }
      return g;
    }
    throw new MergeVQError(
      `${label}: refusing to load: the pickle names the global ${shown}, which is not on the allowlist of data-only types (and unknown globals are refused)`,
      'ERR_UNSAFE_PICKLE',
    );
  };
  const call = (fn: unknown, args: unknown, op: string): unknown => {
    if (!Array.isArray(args)) bad(`${op} arguments must be a tuple, got ${typeof args}`);
    const a = args as unknown[];
    if (fn instanceof PickleCallable) return made(fn.call(a, ctx));
    if (fn instanceof UnknownGlobal) return made(new PickleObject(fn.qualname, a));
    return bad(`${op} on a value that is not callable (${fn instanceof Object ? fn.constructor.name : typeof fn})`);
  };
  const setItems = (target: unknown, kv: unknown[]) => {
    if (kv.length % 2 !== 0) bad('SETITEMS with an odd number of values');
    charge(8 * kv.length);
    if (target instanceof Map) for (let i = 0; i < kv.length; i += 2) target.set(kv[i], kv[i + 1]);
    else if (target instanceof PickleObject)
      for (let i = 0; i < kv.length; i += 2) target.items.push([kv[i], kv[i + 1]]);
    else bad(`SETITEM(S) on a ${typeof target} that is not a dict`);
  };
  const appendItems = (target: unknown, vs: unknown[]) => {
    // A loop, not push(...vs): a spread of a huge APPENDS would overflow the call stack.
    let dst: unknown[] | undefined;
    if (Array.isArray(target) && !Object.isFrozen(target)) dst = target;
    else if (target instanceof PickleObject) dst = target.list;
    else bad(`APPEND(S) on a value that is not a list`);
    charge(8 * vs.length);
    for (const v of vs) dst!.push(v);
  };
  const tuple = (vs: unknown[]) => made(Object.freeze(vs));

  while (true) {
    const opPos = pos;
    if (pos >= data.byteLength)
      throw new PickleTruncatedError(`${label}: invalid pickle: missing STOP opcode (truncated pickle)`);
    if (++ops > lim.maxOps) bad(`more than ${lim.maxOps} opcodes (limit maxOps)`);
    if (stack.length + marks.length > lim.maxStack)
      bad(`more than ${lim.maxStack} values and MARKs on the stack at byte ${opPos} (limit maxStack)`);
    const op = data[pos++]!;
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) bad(`unsupported pickle protocol ${data[pos - 1]}`);
        break;
      case 0x95: // FRAME: a length hint only
        u64();
        break;
      case 0x2e: // STOP
        if (stack.length !== 1 || marks.length !== 0) bad(`STOP with ${stack.length} values on the stack`);
        checkDepth(stack[0], lim.maxDepth, bad);
        return { value: stack[0], end: pos };
      case 0x28: // MARK
        marks.push(stack.length);
        break;
      case 0x30: // POP
        pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(made(new Map()));
        break;
      case 0x5d: // EMPTY_LIST
        stack.push(made([]));
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(tuple([]));
        break;
      case 0x8f: // EMPTY_SET
        stack.push(made(new Set()));
        break;
      case 0x90: {
        // ADDITEMS
        const vs = popMark();
        const s = top();
        if (!(s instanceof Set)) bad('ADDITEMS on a value that is not a set');
        for (const v of vs) (s as Set<unknown>).add(v);
        break;
      }
      case 0x91: // FROZENSET
        stack.push(made(new Set(popMark())));
        break;
      case 0x64: {
        // DICT
        const kv = popMark();
        const m = made(new Map());
        setItems(m, kv);
        stack.push(m);
        break;
      }
      case 0x6c: // LIST
        stack.push(made(popMark()));
        break;
      case 0x74: // TUPLE
        stack.push(tuple(popMark()));
        break;
      case 0x85: // TUPLE1
        stack.push(tuple([pop()]));
        break;
      case 0x86: {
        const b = pop();
        const a = pop();
        stack.push(tuple([a, b]));
        break;
      }
      case 0x87: {
        const c = pop();
        const b = pop();
        const a = pop();
        stack.push(tuple([a, b, c]));
        break;
      }
      case 0x4a: // BININT
        stack.push(view.getInt32(need(4, 'BININT'), true));
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(longLE(bytes(u8(), 'LONG1')));
        break;
      case 0x8b: {
        // LONG4
        const n = view.getInt32(need(4, 'LONG4'), true);
        if (n < 0) bad(`LONG4 of ${n} bytes`);
        stack.push(longLE(bytes(n, 'LONG4')));
        break;
      }
      case 0x49: {
        // INT (text)
        const s = line().trim();
        if (s === '00') stack.push(false);
        else if (s === '01') stack.push(true);
        else stack.push(decimal(s, 'INT'));
        break;
      }
      case 0x4c: {
        // LONG (text)
        stack.push(decimal(line().trim().replace(/L$/, ''), 'LONG'));
        break;
      }
      case 0x46: {
        // FLOAT (text)
        const s = line().trim();
        const v = Number(s);
        if (Number.isNaN(v) && !/^[+-]?nan$/i.test(s)) bad(`FLOAT ${describePickled(s, 40)}`);
        stack.push(v);
        break;
      }
      case 0x47: // BINFLOAT (big-endian)
        stack.push(view.getFloat64(need(8, 'BINFLOAT'), false));
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x58: // BINUNICODE
        stack.push(str(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(str(u8()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(str(u64()));
        break;
      case 0x56: // UNICODE (raw-unicode-escape text)
        stack.push(
          line().replace(
            /\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g,
            (_, a: string | undefined, b: string | undefined) => String.fromCodePoint(parseInt(a ?? b!, 16)),
          ),
        );
        break;
      case 0x42: // BINBYTES
        stack.push(new Uint8Array(bytes(u32(), 'BINBYTES')));
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(new Uint8Array(bytes(u8(), 'SHORT_BINBYTES')));
        break;
      case 0x8e: // BINBYTES8
        stack.push(new Uint8Array(bytes(u64(), 'BINBYTES8')));
        break;
      case 0x96: // BYTEARRAY8
        stack.push(new Uint8Array(bytes(u64(), 'BYTEARRAY8')));
        break;
      case 0x54: {
        // BINSTRING (Python 2 str, read as latin-1)
        const n = view.getInt32(need(4, 'BINSTRING'), true);
        if (n < 0) bad(`BINSTRING of negative length ${n}`);
        stack.push(latin1(bytes(n, 'BINSTRING')));
        break;
      }
      case 0x55: // SHORT_BINSTRING
        stack.push(latin1(bytes(u8(), 'SHORT_BINSTRING')));
        break;
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const kv = popMark();
        setItems(top(), kv);
        break;
      }
      case 0x61: {
        // APPEND
        const v = pop();
        appendItems(top(), [v]);
        break;
      }
      case 0x65: {
        // APPENDS
        const vs = popMark();
        appendItems(top(), vs);
        break;
      }
      case 0x71: // BINPUT
        memoPut(u8());
        break;
      case 0x72: // LONG_BINPUT
        memoPut(u32());
        break;
      case 0x94: // MEMOIZE
        memoPut(memo.size);
        break;
      case 0x70: {
        // PUT (text)
        const s = line();
        if (!/^\d{1,15}$/.test(s)) bad(`PUT ${describePickled(s, 40)}`);
        memoPut(Number(s));
        break;
      }
      case 0x68: // BINGET
        stack.push(memoGet(u8()));
        break;
      case 0x6a: // LONG_BINGET
        stack.push(memoGet(u32()));
        break;
      case 0x67: {
        // GET (text)
        const s = line();
        if (!/^\d{1,15}$/.test(s)) bad(`GET ${describePickled(s, 40)}`);
        stack.push(memoGet(Number(s)));
        break;
      }
      case 0x63: {
        // GLOBAL
        const module = line();
        const name = line();
        stack.push(resolve(module, name));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') bad('STACK_GLOBAL needs two strings');
        stack.push(resolve(module as string, name as string));
        break;
      }
      case 0x52: {
        // REDUCE
        const args = pop();
        const fn = pop();
        stack.push(call(fn, args, 'REDUCE'));
        break;
      }
      case 0x81: {
        // NEWOBJ
        const args = pop();
        const cls = pop();
        stack.push(call(cls, args, 'NEWOBJ'));
        break;
      }
      case 0x92: {
        // NEWOBJ_EX (keyword arguments are not supported by any allowed global)
        const kwargs = pop();
        const args = pop();
        const cls = pop();
        if (!(kwargs instanceof Map) || kwargs.size !== 0) {
          if (cls instanceof UnknownGlobal) {
            stack.push(
              made(new PickleObject(cls.qualname, [...(Array.isArray(args) ? (args as unknown[]) : [args]), kwargs])),
            );
            break;
          }
          bad('NEWOBJ_EX with keyword arguments');
        }
        stack.push(call(cls, args, 'NEWOBJ_EX'));
        break;
      }
      case 0x69: {
        // INST: module and name lines, arguments since MARK
        const module = line();
        const name = line();
        const args = popMark();
        stack.push(call(resolve(module, name), tuple(args), 'INST'));
        break;
      }
      case 0x6f: {
        // OBJ: class and arguments since MARK
        const vs = popMark();
        if (vs.length === 0) bad('OBJ without a class');
        stack.push(call(vs[0], tuple(vs.slice(1)), 'OBJ'));
        break;
      }
      case 0x62: {
        // BUILD: set state. Only inert containers take it; data types ignore it (e.g. the
        // `_metadata` attribute of a state_dict OrderedDict).
        const state = pop();
        const obj = top();
        if (obj instanceof PickleObject) obj.state = state;
        else if (obj instanceof PickleCallable || obj instanceof UnknownGlobal) bad('BUILD on a global');
        break;
      }
      case 0x51: {
        // BINPERSID
        const pid = pop();
        if (!opts.persistentLoad) bad('persistent id without a persistent loader');
        stack.push(opts.persistentLoad!(pid));
        break;
      }
      case 0x50: {
        // PERSID (text)
        const pid = line();
        if (!opts.persistentLoad) bad('persistent id without a persistent loader');
        stack.push(opts.persistentLoad!(pid));
        break;
      }
      case 0x82:
      case 0x83:
      case 0x84: // EXT1/2/4: globals from the copyreg extension registry, which we cannot vet
        throw new MergeVQError(
          `${label}: refusing to load: the pickle uses an extension-registry global (opcode 0x${op.toString(16)}) at byte ${opPos}`,
          'ERR_UNSAFE_PICKLE',
        );
      case 0x97:
      case 0x98: // NEXT_BUFFER / READONLY_BUFFER
        bad(`out-of-band buffers (opcode 0x${op.toString(16)}) are not supported`);
        break;
      default:
        bad(`unknown opcode 0x${op.toString(16).padStart(2, '0')} at byte ${opPos}`);
    }
  }
}

const isContainer = (v: unknown): v is object =>
  Array.isArray(v) || v instanceof Map || v instanceof Set || v instanceof PickleObject;

function* childrenOf(v: object): Generator<unknown> {
  if (Array.isArray(v) || v instanceof Set) yield* v;
  else if (v instanceof Map) {
    for (const [k, x] of v) {
      yield k;
      yield x;
    }
  } else if (v instanceof PickleObject) {
    yield* v.args;
    yield v.state;
    for (const [k, x] of v.items) {
      yield k;
      yield x;
    }
    yield* v.list;
  }
}

/**
 * Refuses a result nested deeper than `maxDepth` containers. Every container is visited once (the
 * height of a shared one is remembered), so the cost is linear in the result's size even for a DAG
 * of shared lists whose unfolded tree is exponential; a cycle does not add depth.
 */
function checkDepth(root: unknown, maxDepth: number, bad: (msg: string) => never): void {
  if (!isContainer(root)) return;
  const height = new Map<object, number>();
  const onPath = new Set<object>();
  const frames: { obj: object; it: Generator<unknown>; h: number }[] = [{ obj: root, it: childrenOf(root), h: 1 }];
  onPath.add(root);
  while (frames.length > 0) {
    const f = frames[frames.length - 1]!;
    const next = f.it.next();
    if (next.done) {
      frames.pop();
      onPath.delete(f.obj);
      height.set(f.obj, f.h);
      const parent = frames[frames.length - 1];
      if (parent) parent.h = Math.max(parent.h, f.h + 1);
      continue;
    }
    const c = next.value;
    if (!isContainer(c) || onPath.has(c)) continue;
    const known = height.get(c);
    if (known !== undefined) {
      f.h = Math.max(f.h, known + 1);
      if (frames.length + known > maxDepth) bad(`values nested more than ${maxDepth} deep (limit maxDepth)`);
      continue;
    }
    if (frames.length + 1 > maxDepth) bad(`values nested more than ${maxDepth} deep (limit maxDepth)`);
    onPath.add(c);
    frames.push({ obj: c, it: childrenOf(c), h: 1 });
  }
}
