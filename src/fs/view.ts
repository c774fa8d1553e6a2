/**
 * What the FUSE adapter needs from anything it can show: the live volume (read-write) and a
 * snapshot view (read-only) both answer these, by inode number.
 */
import type { Attr } from './inode.js'

export interface DirEntry { name: string, ino: number, type: number }

export interface ReadView {
  getattr: (ino: number) => Attr
  /** The inode named `name` in directory `parent`; ENOENT/ENOTDIR otherwise. */
  lookup: (parent: number, name: string) => { ino: number }
  readdir: (ino: number) => DirEntry[]
  readlink: (ino: number) => string
  getxattr: (ino: number, name: string) => Buffer
  listxattr: (ino: number) => string[]
  /** An open handle starts or ends. */
  open: (ino: number) => unknown
  close: (ino: number) => void
  /** Reads up to `length` bytes at `offset` into `into`; returns the count. */
  read: (ino: number, offset: number, length: number, into: Buffer) => number
  /**
   * Like read, without a copy: hands `send` the bytes as slices of cached pages, valid only
   * while `send` runs (no slice at or past the end of the file).
   */
  readSlices: (ino: number, offset: number, length: number, send: (slices: Buffer[]) => void) => number
}
