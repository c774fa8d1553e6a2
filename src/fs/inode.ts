/**
 * An inode as the live volume holds it in memory: the stored record plus what only a running
 * daemon knows (open handles). Also the file-type helpers and the attribute shape every view
 * returns to the adapters.
 */
import type { InodeRecord, TimeNanos } from '../store/records.js'

export const S_IFMT = 0o170000
export const S_IFDIR = 0o040000
export const S_IFREG = 0o100000
export const S_IFLNK = 0o120000

export type InodeFields = Omit<InodeRecord, 'b'>

export interface Inode extends InodeFields {
  ino: number
  /** Open file handles; an inode with no links is deleted when this drops to zero. */
  opens: number
}

/** What getattr returns: st_* fields, times in ms, blocks in 512-byte units. */
export interface Attr {
  ino: number
  mode: number
  uid: number
  gid: number
  size: number
  nlink: number
  rdev: number
  blksize: number
  blocks: number
  atime: number
  mtime: number
  ctime: number
  ns?: TimeNanos
}

export function isDir (mode: number): boolean {
  return (mode & S_IFMT) === S_IFDIR
}

export function isReg (mode: number): boolean {
  return (mode & S_IFMT) === S_IFREG
}

export function isLink (mode: number): boolean {
  return (mode & S_IFMT) === S_IFLNK
}

/** The stored record of an inode (without the birth generation, which the writer sets). */
export function recordOf (inode: Inode): InodeFields {
  const record: InodeFields = {
    mode: inode.mode,
    uid: inode.uid,
    gid: inode.gid,
    size: inode.size,
    nlink: inode.nlink,
    atime: inode.atime,
    mtime: inode.mtime,
    ctime: inode.ctime,
    rdev: inode.rdev,
    blocks: inode.blocks
  }
  if (inode.ns !== undefined) record.ns = inode.ns
  if (inode.target !== undefined) record.target = inode.target
  if (inode.parent !== undefined) record.parent = inode.parent
  return record
}

export function attrOf (inode: InodeFields & { ino: number }, blockSize: number): Attr {
  return {
    ino: inode.ino,
    mode: inode.mode,
    uid: inode.uid,
    gid: inode.gid,
    size: inode.size,
    nlink: inode.nlink,
    rdev: inode.rdev,
    blksize: blockSize,
    blocks: inode.blocks,
    atime: inode.atime,
    mtime: inode.mtime,
    ctime: inode.ctime,
    ns: inode.ns
  }
}

export type TimeField = 'atime' | 'mtime' | 'ctime'

/**
 * Sets a time of an inode: `ms` since the epoch and `ns` nanoseconds within that millisecond (kept
 * only when a caller set them; a time the file system stamps itself has none).
 */
export function setTime (inode: InodeFields, field: TimeField, ms: number, ns = 0): void {
  inode[field] = ms
  const key = field === 'atime' ? 'a' : field === 'mtime' ? 'm' : 'c'
  if (ns === 0 && inode.ns?.[key] === undefined) return
  const nanos: TimeNanos = { ...inode.ns }
  if (ns === 0) delete nanos[key]
  else nanos[key] = ns
  if (Object.keys(nanos).length === 0) delete inode.ns
  else inode.ns = nanos
}
