/**
 * The page cache: live file data in pages of the store's block size, with dirty tracking, an LRU
 * order, a memory bound and read-ahead. It owns page memory and nothing else; it learns what a
 * page holds on disk through a `PageSource` and never writes to the store itself (fs/commit.ts
 * takes dirty pages from here into a transaction).
 *
 * Invariants:
 * - A dirty page, or one whose data is in a commit not yet visible in the store (`pinned`), is
 *   never evicted: it is the only up-to-date copy readers can find.
 * - A page lent to a read (`lent`, see `readSlices`) is not evicted until the read has sent it.
 * - Resident pages never exceed `maxPages` except while every page is dirty, pinned or lent (a
 *   read lends at most the pages of one request); writers then wait for a commit (`isFull`),
 *   which is how the memory bound holds under a write flood.
 * - Bytes past a file's size inside its last page are zero (truncate keeps them so).
 */
import createDebug from 'debug'

const debug = createDebug('snapfs:cache')

/** What the cache needs from the layer below: a block's bytes, and a hint to read ahead. */
export interface PageSource {
  /** Fills `into` with block `index` of `ino` and returns true, or returns false for a hole. */
  read: (ino: number, index: number, into: Buffer) => boolean
  /** Asks the store to bring these blocks into memory in the background. */
  prefetch: (ino: number, indexes: number[]) => void
}

export class Page {
  readonly ino: number
  readonly index: number
  data: Buffer
  dirty = false
  /** When the page last went from clean to dirty (ms). */
  dirtySince = 0
  /** The cache's dirty counter when the page last went from clean to dirty. */
  dirtySeq = 0
  /** Sequence number of the commit carrying this page's data, until that commit is visible. */
  pinned = 0
  /** A read holds slices of this page's data (see `readSlices`): it is not evicted meanwhile. */
  lent = false
  prev: Page | null = null
  next: Page | null = null

  constructor (ino: number, index: number, data: Buffer) {
    this.ino = ino
    this.index = index
    this.data = data
  }
}

/** Read-ahead window, in pages: starts small and doubles while reads stay sequential. */
const READAHEAD_MIN = 4
const READAHEAD_MAX = 32
/**
 * Buffers of evicted pages kept for new pages. Reusing them keeps page memory out of the garbage
 * collector's hands: freed 64 KiB buffers would otherwise pile up as external memory until V8
 * decides to collect, far past the cache bound.
 */
const SPARE_BUFFERS = 64

interface Stream { next: number, window: number, ahead: number }

export class PageCache {
  readonly pageSize: number
  readonly maxPages: number
  private readonly source: PageSource
  private readonly byInode = new Map<number, Map<number, Page>>()
  /** Dirty pages in the order they became dirty: the first is the oldest. */
  private readonly dirtySet = new Set<Page>()
  /** Dirty page count per inode. */
  private readonly dirtyCount = new Map<number, number>()
  /** Counts clean → dirty transitions; orders dirty pages for write-back. */
  private dirtyCounter = 0
  /** LRU list: head is the least recently used page. */
  private head: Page | null = null
  private tail: Page | null = null
  private resident = 0
  private readonly streams = new Map<number, Stream>()
  private readonly spare: Buffer[] = []
  /** One page of zeros: what a hole reads as. */
  private readonly zeros: Buffer

  constructor (pageSize: number, maxBytes: number, source: PageSource) {
    this.pageSize = pageSize
    this.maxPages = Math.max(16, Math.floor(maxBytes / pageSize))
    this.zeros = Buffer.alloc(pageSize)
    this.source = source
  }

  get residentPages (): number {
    return this.resident
  }

  get dirtyPages (): number {
    return this.dirtySet.size
  }

  dirtyPagesOf (ino: number): number {
    return this.dirtyCount.get(ino) ?? 0
  }

  /** A mark: pages dirtied from now on compare after it (see `dirtyBefore`). */
  dirtyMark (): number {
    return this.dirtyCounter
  }

  /** Whether a page dirtied at or before `mark` is still dirty. */
  dirtyBefore (mark: number): boolean {
    for (const page of this.dirtySet) return page.dirtySeq <= mark
    return false
  }

  /** Age in ms of the oldest dirty page, 0 when nothing is dirty. */
  oldestDirtyAge (now: number): number {
    for (const page of this.dirtySet) return now - page.dirtySince
    return 0
  }

  /** The resident page, if any, marked as recently used. */
  peek (ino: number, index: number): Page | undefined {
    const page = this.byInode.get(ino)?.get(index)
    if (page !== undefined) this.touch(page)
    return page
  }

  /**
   * The page for reading: resident, or loaded from the store; undefined for a hole that is not
   * resident (it reads as zeros). Sequential reads trigger read-ahead.
   */
  read (ino: number, index: number): Page | undefined {
    this.readAhead(ino, index)
    const page = this.peek(ino, index)
    if (page !== undefined) return page
    const data = this.allocate()
    if (!this.source.read(ino, index, data)) {
      this.recycle(data)
      return undefined
    }
    return this.insert(ino, index, data)
  }

  /**
   * The page for writing bytes `from` to `to` of it. `fill` says what the rest of a page not
   * resident starts as: 'stored' reads the block, 'zeros' skips the read (the page lies past the
   * end of the file). The bytes from `from` to `to` are left for the caller to overwrite.
   */
  write (ino: number, index: number, fill: 'stored' | 'zeros', from: number, to: number): Page {
    const page = this.peek(ino, index)
    if (page !== undefined) return page
    const data = this.allocate()
    if (from === 0 && to === this.pageSize) return this.insert(ino, index, data)
    if (fill === 'zeros' || !this.source.read(ino, index, data)) {
      data.fill(0, 0, from)
      data.fill(0, to)
    }
    return this.insert(ino, index, data)
  }

  /** True when no page can be added without a commit first (all resident pages dirty or pinned). */
  isFull (): boolean {
    if (this.resident < this.maxPages) return false
    this.evict(1)
    return this.resident >= this.maxPages
  }

  markDirty (page: Page, now: number): void {
    if (page.dirty) return
    page.dirty = true
    page.dirtySince = now
    page.dirtySeq = ++this.dirtyCounter
    this.dirtySet.add(page)
    this.dirtyCount.set(page.ino, (this.dirtyCount.get(page.ino) ?? 0) + 1)
  }

  private markClean (page: Page): void {
    if (!page.dirty) return
    page.dirty = false
    this.dirtySet.delete(page)
    const count = (this.dirtyCount.get(page.ino) ?? 1) - 1
    if (count === 0) this.dirtyCount.delete(page.ino)
    else this.dirtyCount.set(page.ino, count)
  }

  /** Takes up to `limit` dirty pages, oldest first, for a commit: they become clean and pinned. */
  takeDirty (seq: number, limit: number): Page[] {
    const taken: Page[] = []
    for (const page of this.dirtySet) {
      if (taken.length >= limit) break
      page.pinned = seq
      taken.push(page)
    }
    for (const page of taken) this.markClean(page)
    return taken
  }

  /** A commit is visible in the store: its pages may be evicted again. */
  unpin (pages: Page[], seq: number): void {
    for (const page of pages) if (page.pinned === seq) page.pinned = 0
    if (this.resident > this.maxPages) this.evict(this.resident - this.maxPages)
  }

  /** A commit failed: its pages are dirty again, unless rewritten or dropped since. */
  restore (pages: Page[], seq: number, now: number): void {
    for (const page of pages) {
      if (page.pinned !== seq) continue
      page.pinned = 0
      if (this.byInode.get(page.ino)?.get(page.index) === page) this.markDirty(page, now)
    }
  }

  /** Drops every page of `ino` from `fromIndex` on (truncate, delete); returns the dirty ones dropped. */
  dropFrom (ino: number, fromIndex: number): number {
    const pages = this.byInode.get(ino)
    if (pages === undefined) return 0
    let dirty = 0
    for (const [index, page] of pages) {
      if (index < fromIndex) continue
      if (page.dirty) dirty++
      this.remove(page)
    }
    if (fromIndex === 0) this.streams.delete(ino)
    return dirty
  }

  /**
   * Hands `send` bytes [offset, offset + length) of a file of `size` bytes as slices, in order:
   * of the pages that hold them, and of zeros for holes (none at or past the end); returns the
   * count. The slices are valid only while `send` runs: their pages cannot be evicted meanwhile,
   * and nothing else can change them (`send` must not write).
   */
  readSlices (ino: number, size: number, offset: number, length: number, send: (slices: Buffer[]) => void): number {
    const end = Math.max(offset, Math.min(size, offset + length))
    const bs = this.pageSize
    const slices: Buffer[] = []
    const lent: Page[] = []
    try {
      for (let pos = offset; pos < end;) {
        const index = Math.floor(pos / bs)
        const within = pos - index * bs
        const count = Math.min(bs - within, end - pos)
        const page = this.read(ino, index)
        if (page === undefined) {
          slices.push(this.zeros.subarray(0, count))
        } else {
          page.lent = true
          lent.push(page)
          slices.push(page.data.subarray(within, within + count))
        }
        pos += count
      }
      send(slices)
    } finally {
      for (const page of lent) page.lent = false
    }
    return end - offset
  }

  /** Drops every clean page and the spare buffers (the cache's owner is going away). */
  dropAll (): void {
    this.evict(this.resident)
    this.spare.length = 0
  }

  /** Drops clean, unpinned pages in LRU order until `count` are gone or none is left to drop. */
  evict (count: number): void {
    let page = this.head
    let dropped = 0
    while (page !== null && dropped < count) {
      const next = page.next
      if (!page.dirty && page.pinned === 0 && !page.lent) {
        this.remove(page)
        dropped++
      }
      page = next
    }
    if (dropped > 0) debug('evicted %d pages, %d resident', dropped, this.resident)
  }

  private insert (ino: number, index: number, data: Buffer): Page {
    if (this.resident >= this.maxPages) this.evict(1 + this.resident - this.maxPages)
    const page = new Page(ino, index, data)
    let pages = this.byInode.get(ino)
    if (pages === undefined) {
      pages = new Map()
      this.byInode.set(ino, pages)
    }
    pages.set(index, page)
    this.resident++
    this.append(page)
    return page
  }

  private remove (page: Page): void {
    const pages = this.byInode.get(page.ino)
    if (pages?.get(page.index) !== page) return
    pages.delete(page.index)
    if (pages.size === 0) this.byInode.delete(page.ino)
    this.markClean(page)
    this.unlink(page)
    this.resident--
    this.recycle(page.data)
  }

  /** A page-sized buffer with unspecified contents. */
  private allocate (): Buffer {
    return this.spare.pop() ?? Buffer.allocUnsafeSlow(this.pageSize)
  }

  private recycle (data: Buffer): void {
    if (this.spare.length < SPARE_BUFFERS) this.spare.push(data)
  }

  private readAhead (ino: number, index: number): void {
    const stream = this.streams.get(ino)
    if (stream === undefined || stream.next !== index) {
      this.streams.set(ino, { next: index + 1, window: READAHEAD_MIN, ahead: index })
      return
    }
    stream.next = index + 1
    if (stream.ahead > index + stream.window / 2) return
    const from = Math.max(stream.ahead + 1, index + 1)
    const to = index + stream.window
    const wanted: number[] = []
    const pages = this.byInode.get(ino)
    for (let i = from; i <= to; i++) if (pages?.has(i) !== true) wanted.push(i)
    stream.ahead = to
    stream.window = Math.min(READAHEAD_MAX, stream.window * 2)
    if (wanted.length > 0) this.source.prefetch(ino, wanted)
  }

  private touch (page: Page): void {
    if (this.tail === page) return
    this.unlink(page)
    this.append(page)
  }

  private append (page: Page): void {
    page.prev = this.tail
    page.next = null
    if (this.tail !== null) this.tail.next = page
    else this.head = page
    this.tail = page
  }

  private unlink (page: Page): void {
    if (page.prev !== null) page.prev.next = page.next
    else if (this.head === page) this.head = page.next
    if (page.next !== null) page.next.prev = page.prev
    else if (this.tail === page) this.tail = page.prev
    page.prev = null
    page.next = null
  }
}

/** Copies `slices` (as `readSlices` hands them) one after the other into `into`. */
export function copySlices (slices: Buffer[], into: Buffer): void {
  let at = 0
  for (const slice of slices) at += slice.copy(into, at)
}
