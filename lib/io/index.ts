/**
 * File IO for mergevq: safetensors reading/writing and PyTorch/Lightning checkpoint loading (zip and
 * legacy torch.save formats).
 * Pure TypeScript; the only native dependency is `Tensor` (lib/tensor.ts) for the loaded values.
 */
export {
  SAFETENSORS_DTYPE_SIZE,
  MAX_HEADER_BYTES,
  SafetensorsFile,
  parseSafetensorsHeader,
  readSafetensors,
  readSafetensorsSync,
  encodeSafetensors,
  writeSafetensors,
  writeSafetensorsSync,
  mergevqDTypeOf,
  type SafetensorsDType,
  type SafetensorsHeader,
  type SafetensorsTensorInfo,
  type SafetensorsArray,
  type SafetensorsArrayFor,
  type ReadSafetensorsOptions,
  type RawTensor,
} from './safetensors.js';
export {
  ALLOWED_GLOBALS,
  TorchDTypeRef,
  TorchStorageType,
  TorchTensorRef,
  loadCheckpoint,
  readCheckpointObject,
  type LoadCheckpointOptions,
  type LoadedCheckpoint,
  type TorchDType,
  type TorchStorageRef,
} from './checkpoint.js';
export {
  unpickle,
  unpickleAt,
  isCodeExecutionGlobal,
  describePickled,
  DEFAULT_PICKLE_LIMITS,
  PickleCallable,
  PickleObject,
  PickleTruncatedError,
  UnknownGlobal,
  type PickleCallContext,
  type PickleLimits,
  type UnpickleOptions,
} from './pickle.js';
export { LEGACY_MAGIC } from './legacy.js';
