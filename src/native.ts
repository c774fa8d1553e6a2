/**
 * The project's own N-API addon (native/), built by node-gyp at install: the system calls snapfs
 * needs and Node does not offer. Loaded lazily, so a missing build is one clear line at the point
 * of use rather than a crash at start-up.
 */
import fs from 'node:fs'
import path from 'node:path'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { UserError } from './errors.js'

interface NativeAddon {
  /** syncfs(2) on the file system holding `fd`. */
  syncfs: (fd: number) => void
}

let addon: NativeAddon | null = null

function packageRoot (): string {
  let dir = path.dirname(fileURLToPath(import.meta.url))
  while (!fs.existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir)
  return dir
}

export function native (): NativeAddon {
  if (addon !== null) return addon
  const file = path.join(packageRoot(), 'native', 'build', 'Release', 'snapfs_native.node')
  if (!fs.existsSync(file)) throw new UserError(`the native addon is not built (${file} is missing): run npm install`)
  addon = createRequire(import.meta.url)(file) as NativeAddon
  return addon
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
