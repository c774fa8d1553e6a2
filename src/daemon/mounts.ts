/**
 * The kernel's view of mounts: reading /proc/mounts, telling a live mount from a dead one
 * ("Transport endpoint is not connected"), and unmounting through fusermount.
 */
import fs from 'node:fs'
import path from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'

const run = promisify(execFile)

export interface MountEntry { source: string, target: string, type: string, options: string }

/** /proc/mounts escapes space, tab, newline and backslash as octal. */
function unescape (field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)))
}

export function listMounts (): MountEntry[] {
  return fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter(line => line.length > 0).map(line => {
    const [source, target, type, options] = line.split(' ')
    return { source: unescape(source), target: unescape(target), type, options }
  })
}

/**
 * Sets how far the kernel reads ahead on the mount at `target` (its backing device's
 * read_ahead_kb in sysfs): a FUSE mount starts at 128 KiB, which also caps its read requests.
 * Needs root; the error says why it could not.
 */
export function setReadahead (target: string, bytes: number): void {
  const line = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .filter(entry => unescape(entry.split(' ')[4] ?? '') === target).pop()
  const device = line?.split(' ')[2]
  if (device === undefined) throw new Error(`no mount at ${target} in /proc/self/mountinfo`)
  fs.writeFileSync(`/sys/class/bdi/${device}/read_ahead_kb`, `${Math.floor(bytes / 1024)}\n`)
}

/** The mount at exactly `target`, if any (the last one wins, as in the kernel). */
export function mountAt (target: string): MountEntry | undefined {
  return listMounts().filter(entry => entry.target === target).pop()
}

/** The snapfs mount that holds `dir` (the deepest one), if any. */
export function snapfsMountHolding (dir: string): string | undefined {
  const abs = absoluteMountpoint(dir)
  let best: string | undefined
  for (const entry of listMounts()) {
    if (entry.type !== 'fuse.snapfs') continue
    const inside = abs === entry.target || abs.startsWith(entry.target === '/' ? '/' : entry.target + '/')
    if (inside && (best === undefined || entry.target.length > best.length)) best = entry.target
  }
  return best
}

/** An absolute path for a mount point without touching it (stat on a dead mount fails). */
export function absoluteMountpoint (mountpoint: string): string {
  const abs = path.resolve(mountpoint)
  try {
    return fs.realpathSync(abs)
  } catch {
    return abs
  }
}

/** Whether the mount at `target` answers (false for a dead FUSE mount). */
export function answers (target: string): boolean {
  try {
    // Opening the directory always reaches the daemon; a stat may be answered from the kernel's cache.
    fs.opendirSync(target).closeSync()
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ENOTCONN'
  }
}

/** Unmounts a FUSE mount; `lazy` detaches it even while busy. Throws with fusermount's message. */
export async function fuseUnmount (target: string, lazy: boolean): Promise<void> {
  try {
    await run('fusermount', [lazy ? '-uz' : '-u', target])
  } catch (err) {
    const stderr = String((err as { stderr?: string }).stderr ?? '').trim()
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      await run('umount', lazy ? ['-l', target] : [target])
      return
    }
    throw new Error(stderr.length > 0 ? stderr.replace(/^fusermount3?: /, '') : String(err))
  }
}
