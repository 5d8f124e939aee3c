/**
 * File IO for mergevq: safetensors reading/writing and PyTorch/Lightning checkpoint loading.
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
export { unpickle, PickleCallable, PickleObject, UnknownGlobal, type UnpickleOptions } from './pickle.js';
