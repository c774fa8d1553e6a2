/**
 * The project's own N-API addon (native/), built by node-gyp at install: the system calls snapfs
 * needs and Node does not offer, and the FUSE transport (typed in fuse/lowlevel/). Loaded lazily,
 * so a missing build is one clear line at the point of use rather than a crash at start-up.
 */
import fs from 'node:fs'
import path from 'node:path'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { UserError } from './errors.js'

interface NativeAddon {
  /** syncfs(2) on the file system holding `fd`. */
  syncfs: (fd: number) => void
  /** madvise(MADV_DONTNEED) on a page-aligned range of a shared, read-only file mapping. */
  releaseMapping: (start: bigint, length: bigint) => void
}

let addon: NativeAddon | null = null

function packageRoot (): string {
  let dir = path.dirname(fileURLToPath(import.meta.url))
  while (!fs.existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir)
  return dir
}

/** The addon's exports, loaded on first use; each user types the part it calls. */
export function nativeExports (): object {
  if (addon !== null) return addon
  const file = path.join(packageRoot(), 'native', 'build', 'Release', 'snapfs_native.node')
  if (!fs.existsSync(file)) throw new UserError(`the native addon is not built (${file} is missing): run npm install`)
  addon = createRequire(import.meta.url)(file) as NativeAddon
  return addon
}

export function native (): NativeAddon {
  return nativeExports() as NativeAddon
}

/** Flushes the kernel's buffers for the file system mounted at `dir`. */
export function syncMount (dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)
  try {
    native().syncfs(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * Drops this process's mappings of `file`'s pages (they stay in the kernel's page cache), so a
 * memory-mapped store does not count against the process's resident memory. Returns the bytes
 * of mappings released.
 */
export function releaseFileMappings (file: string): number {
  const addon = native()
  let released = 0
  for (const line of fs.readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    if (!line.endsWith(file)) continue
    const fields = line.split(/\s+/)
    if (fields[5] !== file || fields[1][0] !== 'r' || fields[1][1] !== '-' || fields[1][3] !== 's') continue
    const [start, end] = fields[0].split('-').map(hex => BigInt('0x' + hex))
    addon.releaseMapping(start, end - start)
    released += Number(end - start)
  }
  return released
}
