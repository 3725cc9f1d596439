// Types of www/wgpu-rmsnorm.js: the generated bindings' API, and init.
export {
  Normalizer,
  referenceRmsNorm,
  referenceLayerNorm,
  compareToReference,
  referenceRmsNormBackward,
  referenceLayerNormBackward,
  compareGradient,
  sampleData,
  toDType,
} from "./pkg/wgpu_rmsnorm.js";
export type * from "./pkg/wgpu_rmsnorm.js";
/** Loads and instantiates the WebAssembly module, once; resolves when the API is ready. */
export default function init(moduleOrPath?: unknown): Promise<unknown>;
