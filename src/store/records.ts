/**
 * The values the store keeps, as TypeScript types. Head records carry `b`, the generation that
 * wrote them (see keys.ts for how versions are kept). Times are milliseconds since the epoch, the
 * precision the fuse-native binding carries.
 */

/** A file, directory, symlink or special file. */
export interface InodeRecord {
  /** Birth generation of this version. */
  b: number
  mode: number
  uid: number
  gid: number
  size: number
  nlink: number
  atime: number
  mtime: number
  ctime: number
  /**
   * Nanoseconds within the millisecond of a time a caller set (utimensat through a transport that
   * carries them); absent for times the file system stamped itself.
   */
  ns?: TimeNanos
  rdev: number
  /** Space the data holds in the store, in 512-byte sectors (what st_blocks reports). */
  blocks: number
  /** Symlink target. */
  target?: string
  /**
   * The directory holding the inode's newest name: a directory's parent (rename must refuse to
   * move a directory into itself), and where `diff` looks for a file's name.
   */
  parent?: number
}

/** Nanoseconds within the millisecond of the access, modification and change times. */
export interface TimeNanos { a?: number, m?: number, c?: number }

/** A name in a directory. */
export interface DirentRecord {
  b: number
  ino: number
  /** The file type bits (mode & S_IFMT) of the inode, so readdir needs no inode reads. */
  type: number
}

/** An extended attribute value. */
export interface XattrRecord {
  b: number
  v: Buffer
}

/** An old version of a head record: the encoded value and the generation at which it died. */
export interface HistoryRecord {
  d: number
  v: Buffer
}

/** A volume: a live file system tree and its generation counter. */
export interface VolumeRecord {
  id: number
  name: string
  /** Current generation: what new versions are born with. */
  gen: number
  /** Generation of the newest snapshot (0 when none): heads born after it may change in place. */
  lastSnapGen: number
  /** Next inode number to hand out. */
  nextIno: number
  created: number
  /** Bytes of data the live volume references (allocated, like st_blocks). */
  used: number
  /** Bytes of the live volume's data written since its newest snapshot. */
  written: number
  /** Bytes held by snapshots only: old data versions no live file references. */
  snapshotBytes: number
  /** Most snapshots the volume may have, null for no limit. */
  maxSnapshots: number | null
  /** Most bytes its snapshots may hold (`snapshotBytes`) for a new one to be created, null for no limit. */
  maxSnapshotBytes: number | null
  /** For a clone: the snapshot it started from (until promoted). */
  origin?: { volume: number, snapshot: string, gen: number }
  /** Set while a clone is being copied: how far (store/clone.ts). */
  cloning?: { phase: number, key?: Buffer }
  /** Set once the volume is being deleted: it cannot be mounted, and its records are going. */
  deleting?: boolean
  /** Set while a rollback runs (store/rollback.ts). */
  rollback?: RollbackState
  /**
   * Trees being restored under a temporary name (fs/restore.ts), by directory and name: one left
   * here by a daemon that stopped is removed by the next.
   */
  restoring?: Array<{ parent: number, name: string }>
}

/**
 * A rollback in progress. In the `scan` phase the records changed since the snapshot are listed in
 * `pending` while the volume stays as it was; from the `apply` phase on the volume reads as the
 * snapshot (a pending record reads as the snapshot's version) while the records are set back.
 */
export interface RollbackState {
  /** The snapshot: its name and generation. */
  name: string
  gen: number
  /** Records changed in (gen, base] are listed by the scan; later ones when the phase turns. */
  base: number
  phase: 'scan' | 'apply'
  /** How far the scan is: the last births (then dead-list) key it listed. */
  cursor?: { index: 'births' | 'deadlist', key: Buffer }
  /** Records set back, and to set back (known once the apply phase starts). */
  done: number
  total: number
  /** When it began, ms since the epoch. */
  started: number
}

/** What a snapshot is doing: `ready` to browse, or `deleting` in the background. */
export type SnapshotStatus = 'ready' | 'deleting'

/** A snapshot: the volume as it was at generation `gen`. */
export interface SnapshotRecord {
  /** Store-wide number, never reused. */
  id: number
  name: string
  description: string
  /** Creation time, ms since the epoch. */
  created: number
  /** The generation it froze: it sees every version born at or before it and dead after it. */
  gen: number
  status: SnapshotStatus
  /** Bytes of data it references (the volume's `used` when it was taken). */
  refer: number
  /** Bytes of data written between the previous snapshot and this one. */
  written: number
  /**
   * While deleting: the last dead-list key handled, entries handled, entries to handle, bytes
   * freed (blocks no one else references) and bytes of data versions dropped.
   */
  cursor?: Buffer
  done?: number
  total?: number
  freed?: number
  dropped?: number
  /** While deleting: the volume's generation when the delete began. */
  deleteGen?: number
}

/** The store's identity and format, under the meta key "format". */
export interface FormatRecord {
  magic: 'snapfs'
  version: number
  blockSize: number
  created: number
}

/** Inode number of every volume's root directory. */
export const ROOT_INO = 1
