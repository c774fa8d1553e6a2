/**
 * The control protocol: one JSON object per line over the mount's Unix socket. A request names an
 * operation; the reply carries its result or one line of error.
 */

export interface Request {
  id: number
  op: string
  args?: Record<string, unknown>
}

export type Reply =
  | { id: number, ok: true, result: unknown }
  | { id: number, ok: false, error: string }

/** What `status` returns. */
export interface MountStatus {
  pid: number
  store: string
  volume: string
  mountpoint: string
  cacheBytes: number
  residentBytes: number
  dirtyBytes: number
  /** How the mount reaches the kernel, and (native) what the kernel sends and holds. */
  transport: 'native' | 'fuse-native'
  largestWrite?: number
  largestRead?: number
  kernelNodes?: number
}
