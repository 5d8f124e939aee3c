/**
 * A restricted Python unpickler: it rebuilds data (dicts, lists, tuples, numbers, strings, bytes)
 * and never runs code. A pickle can only name a global (a Python callable or class); this module
 * resolves each named global through a caller-supplied allowlist and refuses the whole pickle when
 * one is not on it (`ERR_UNSAFE_PICKLE`), unless the caller opts into inert placeholders.
 *
 * Python values map to JS as: dict -> Map, list -> Array, tuple -> frozen Array, int -> number
 * (bigint beyond 2^53), float -> number, str -> string, bytes -> Uint8Array, None -> null,
 * bool -> boolean, set/frozenset -> Set.
 */
import { MergeVQError } from '../errors.js';

/** A global the allowlist resolved: calling it is a pure JS function of the pickled arguments. */
export class PickleCallable {
  constructor(
    /** `module.name` as the pickle named it. */
    readonly qualname: string,
    /** Builds the value from the arguments tuple (REDUCE / NEWOBJ). */
    readonly call: (args: readonly unknown[]) => unknown,
  ) {}
}

/**
 * A global that is not on the allowlist, kept as inert data when `skipUnknownGlobals` is set.
 * Calling it in the pickle yields a `PickleObject`; nothing is ever executed.
 */
export class UnknownGlobal {
  constructor(readonly module: string, readonly name: string) {}
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
  constructor(readonly global: string, readonly args: readonly unknown[]) {}
}

/** Options of `unpickle`. */
export interface UnpickleOptions {
  /**
   * Resolves a global named by the pickle. Return the value it stands for (a `PickleCallable` for
   * things the pickle may call, any other value for data such as dtype markers), or `undefined` to
   * refuse it.
   */
  resolveGlobal: (module: string, name: string) => unknown;
  /** Resolves a persistent id (BINPERSID); without it, persistent ids are an error. */
  persistentLoad?: (pid: unknown) => unknown;
  /** Replace globals the allowlist refuses with inert `UnknownGlobal`s instead of failing. */
  skipUnknownGlobals?: boolean;
  /** A name for the source in error messages. */
  label?: string;
}

/** Parses pickle bytes (protocols 0 to 5, without out-of-band buffers) into JS values. */
export function unpickle(data: Uint8Array, opts: UnpickleOptions): unknown {
  const label = opts.label ?? '<pickle>';
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const bad = (msg: string): never => {
    throw new MergeVQError(`${label}: invalid pickle: ${msg}`, 'ERR_BAD_FILE');
  };
  let pos = 0;
  const stack: unknown[] = [];
  const marks: number[] = [];
  const memo = new Map<number, unknown>();

  const need = (n: number, what: string): number => {
    if (!Number.isSafeInteger(n) || n < 0 || pos + n > data.byteLength) bad(`${what} of ${n} bytes at byte ${pos} runs past the end (${data.byteLength} bytes)`);
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
  const latin1 = (b: Uint8Array) => {
    let s = '';
    for (const c of b) s += String.fromCharCode(c);
    return s;
  };
  const line = () => {
    const start = pos;
    const end = data.indexOf(0x0a, pos);
    if (end < 0) bad(`unterminated text line at byte ${start}`);
    pos = end + 1;
    return latin1(data.subarray(start, end));
  };
  const pop = (): unknown => {
    if (stack.length === 0 || (marks.length > 0 && stack.length <= marks[marks.length - 1]!)) bad(`stack underflow at byte ${pos}`);
    return stack.pop();
  };
  const top = (): unknown => {
    if (stack.length === 0 || (marks.length > 0 && stack.length <= marks[marks.length - 1]!)) bad(`stack underflow at byte ${pos}`);
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
  const memoPut = (i: number) => memo.set(i, top());
  const intFrom = (v: bigint): number | bigint => (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
  const longLE = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
    if (b[b.length - 1]! & 0x80) v -= 1n << BigInt(8 * b.length);
    return intFrom(v);
  };
  const resolve = (module: string, name: string): unknown => {
    const v = opts.resolveGlobal(module, name);
    if (v !== undefined) return v;
    if (opts.skipUnknownGlobals) return new UnknownGlobal(module, name);
    throw new MergeVQError(
      `${label}: refusing to load: the pickle names the global ${module}.${name}, which is not on the allowlist of data-only types (loading it could run code)`,
      'ERR_UNSAFE_PICKLE',
    );
  };
  const call = (fn: unknown, args: unknown, op: string): unknown => {
    if (!Array.isArray(args)) bad(`${op} arguments must be a tuple, got ${typeof args}`);
    const a = args as unknown[];
    if (fn instanceof PickleCallable) return fn.call(a);
    if (fn instanceof UnknownGlobal) return new PickleObject(fn.qualname, a);
    return bad(`${op} on a value that is not callable (${fn instanceof Object ? fn.constructor.name : typeof fn})`);
  };
  const setItems = (target: unknown, kv: unknown[]) => {
    if (kv.length % 2 !== 0) bad('SETITEMS with an odd number of values');
    if (target instanceof Map) for (let i = 0; i < kv.length; i += 2) target.set(kv[i], kv[i + 1]);
    else if (target instanceof PickleObject) for (let i = 0; i < kv.length; i += 2) target.items.push([kv[i], kv[i + 1]]);
    else bad(`SETITEM(S) on a ${typeof target} that is not a dict`);
  };
  const appendItems = (target: unknown, vs: unknown[]) => {
    // A loop, not push(...vs): a spread of a huge APPENDS would overflow the call stack.
    let dst: unknown[] | undefined;
    if (Array.isArray(target) && !Object.isFrozen(target)) dst = target;
    else if (target instanceof PickleObject) dst = target.list;
    else bad(`APPEND(S) on a value that is not a list`);
    for (const v of vs) dst!.push(v);
  };
  const tuple = (vs: unknown[]) => Object.freeze(vs);

  while (true) {
    const opPos = pos;
    if (pos >= data.byteLength) bad('missing STOP opcode (truncated pickle)');
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
        return stack[0];
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
        stack.push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(tuple([]));
        break;
      case 0x8f: // EMPTY_SET
        stack.push(new Set());
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
        stack.push(new Set(popMark()));
        break;
      case 0x64: {
        // DICT
        const kv = popMark();
        const m = new Map();
        setItems(m, kv);
        stack.push(m);
        break;
      }
      case 0x6c: // LIST
        stack.push(popMark());
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
        if (n < 0 || n > 1 << 16) bad(`LONG4 of ${n} bytes`);
        stack.push(longLE(bytes(n, 'LONG4')));
        break;
      }
      case 0x49: {
        // INT (text)
        const s = line().trim();
        if (s === '00') stack.push(false);
        else if (s === '01') stack.push(true);
        else if (/^[+-]?\d+$/.test(s)) stack.push(intFrom(BigInt(s)));
        else bad(`INT ${JSON.stringify(s)}`);
        break;
      }
      case 0x4c: {
        // LONG (text)
        const s = line().trim().replace(/L$/, '');
        if (!/^[+-]?\d+$/.test(s)) bad(`LONG ${JSON.stringify(s)}`);
        stack.push(intFrom(BigInt(s)));
        break;
      }
      case 0x46: {
        // FLOAT (text)
        const s = line().trim();
        const v = Number(s);
        if (Number.isNaN(v) && !/^[+-]?nan$/i.test(s)) bad(`FLOAT ${JSON.stringify(s)}`);
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
        stack.push(line().replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_, a: string | undefined, b: string | undefined) => String.fromCodePoint(parseInt(a ?? b!, 16))));
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
        if (!/^\d+$/.test(s)) bad(`PUT ${JSON.stringify(s)}`);
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
        if (!/^\d+$/.test(s)) bad(`GET ${JSON.stringify(s)}`);
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
            stack.push(new PickleObject(cls.qualname, [...(Array.isArray(args) ? (args as unknown[]) : [args]), kwargs]));
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
        throw new MergeVQError(`${label}: refusing to load: the pickle uses an extension-registry global (opcode 0x${op.toString(16)}) at byte ${opPos}`, 'ERR_UNSAFE_PICKLE');
      case 0x97:
      case 0x98: // NEXT_BUFFER / READONLY_BUFFER
        bad(`out-of-band buffers (opcode 0x${op.toString(16)}) are not supported`);
        break;
      default:
        bad(`unknown opcode 0x${op.toString(16).padStart(2, '0')} at byte ${opPos}`);
    }
  }
}
