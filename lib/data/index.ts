/**
 * Training data: IDX files (MNIST / Fashion-MNIST), image folders, and the seeded, prefetching
 * `DataLoader` that turns any `Dataset` into [B, C, H, W] float32 batches.
 */
export {
  IDX_DTYPE_SIZE,
  FASHION_MNIST_CLASSES,
  FASHION_MNIST_DIR,
  decodeIdx,
  readIdx,
  encodeIdx,
  loadFashionMnist,
  type IdxDType,
  type IdxArray,
  type IdxArrayFor,
  type ReadIdxOptions,
  type FashionMnist,
} from './idx.js';
export { IMAGE_EXTENSIONS, ImageFolderDataset, type ImageFolderOptions } from './folder.js';
export {
  DataLoader,
  Uint8ImageDataset,
  fashionMnistDataset,
  type Batch,
  type Dataset,
  type DataLoaderOptions,
  type FashionMnistDatasetOptions,
  type LoaderPosition,
  type Sample,
  type Uint8ImageDatasetOptions,
} from './loader.js';
