/**
 * Names and links on a snapfs mount follow POSIX: an unlinked file stays readable and writable
 * through a descriptor opened before, without leaving any name behind; hard links share one inode
 * whose link count follows link and unlink (and `find -samefile` sees them); symbolic links keep
 * their target text exactly (relative, absolute, dangling); a FIFO made with mkfifo is a FIFO and
 * passes data.
 */
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { link, lstat, mkdir, open, readdir, readFile, readlink, rmdir, stat, symlink, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { errnoOf, mountFresh, onFuseNative, run, type Mounted, sha, scratchDir } from './helpers/mount.js'

t.setTimeout(5 * 60_000)

let m: Mounted
t.before(async () => { m = await mountFresh(t) })

t.test('an unlinked file stays readable and writable through its open descriptor', async t => {
  const dir = await scratchDir(m, 'unlink-open')
  const file = join(dir, 'doomed')
  const data = randomBytes(400_000)
  await writeFile(file, data)
  await writeFile(join(dir, 'other'), 'x')
  const fh = await open(file, 'r+')
  try {
    await unlink(file)
    t.equal(await errnoOf(() => stat(file)), 'ENOENT', 'the name is gone')
    t.same(await readdir(dir), ['other'], 'the directory lists no trace of it')
    const buf = Buffer.alloc(data.length)
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0)
    t.equal(bytesRead, data.length, 'every byte is still readable')
    t.equal(sha(buf), sha(data), 'the same bytes')
    await fh.write(Buffer.from('tail'), 0, 4, data.length)
    const tail = Buffer.alloc(4)
    await fh.read(tail, 0, 4, data.length)
    t.equal(tail.toString(), 'tail', 'writes through the descriptor read back')
    t.equal((await fh.stat()).size, data.length + 4, 'fstat follows the write')
  } finally {
    await fh.close()
  }
  t.same(await readdir(dir), ['other'], 'nothing appears after close')
})

/**
 * libfuse 2.9's path-based API keeps an unlinked open file under a hidden name in its directory;
 * once that directory is removed it can no longer build a path for it, and answers reads on the
 * descriptor with ENOENT without asking the daemon. Expected to fail until the native transport.
 */
const HIDDEN_PATH_DEFECT = 'libfuse 2 loses the path of an open file whose directory was removed'

t.test('a directory whose open file was unlinked can be removed', { todo: onFuseNative(HIDDEN_PATH_DEFECT) }, async t => {
  const dir = await scratchDir(m, 'rmdir-open')
  await writeFile(join(dir, 'held'), 'held open')
  const fh = await open(join(dir, 'held'), 'r')
  try {
    await unlink(join(dir, 'held'))
    await rmdir(dir)
    t.equal(await errnoOf(() => stat(dir)), 'ENOENT', 'the directory is gone')
    const buf = Buffer.alloc(9)
    const { bytesRead } = await fh.read(buf, 0, 9, 0)
    t.equal(buf.subarray(0, bytesRead).toString(), 'held open', 'the descriptor still reads the data')
  } finally {
    await fh.close()
  }
})

t.test('hard links share one inode and its link count goes 1, 2, 1', async t => {
  const dir = await scratchDir(m, 'hard')
  const a = join(dir, 'a')
  const b = join(dir, 'b')
  await writeFile(a, 'first')
  t.equal((await stat(a)).nlink, 1, 'one link')
  await link(a, b)
  const sa = await stat(a)
  const sb = await stat(b)
  t.equal(sb.ino, sa.ino, 'same st_ino')
  t.equal(sa.nlink, 2, 'two links seen from the first name')
  t.equal(sb.nlink, 2, 'two links seen from the second name')
  await writeFile(b, 'written through b')
  t.equal(await readFile(a, 'utf8'), 'written through b', 'a write through one name shows through the other')
  await unlink(a)
  t.equal((await stat(b)).nlink, 1, 'one link after unlinking the first name')
  t.equal(await readFile(b, 'utf8'), 'written through b', 'the data lives on')
  t.equal(await errnoOf(() => link(join(dir, 'missing'), join(dir, 'c'))), 'ENOENT', 'linking a missing name')
  t.equal(await errnoOf(() => link(b, b)), 'EEXIST', 'linking onto an existing name')
})

t.test('find -samefile lists every hard link of a file and nothing else', async t => {
  const dir = await scratchDir(m, 'samefile')
  await mkdir(join(dir, 'sub'))
  await writeFile(join(dir, 'orig'), 'same bytes')
  await link(join(dir, 'orig'), join(dir, 'sub', 'alias'))
  // Same content, different inode: must not match.
  await writeFile(join(dir, 'copy'), 'same bytes')
  const found = await run('find', [dir, '-samefile', join(dir, 'orig')])
  t.equal(found.code, 0, `find succeeds ${found.stderr}`)
  t.same(found.stdout.trim().split('\n').sort(), [join(dir, 'orig'), join(dir, 'sub', 'alias')], 'both links, not the copy')
})

t.test('symbolic links keep their target text and resolve like paths', async t => {
  const dir = await scratchDir(m, 'sym')
  await writeFile(join(dir, 'target.txt'), 'pointed at')
  await mkdir(join(dir, 'tdir'))
  await writeFile(join(dir, 'tdir', 'inside'), 'in dir')
  const rel = join(dir, 'rel')
  const abs = join(dir, 'abs')
  const dangling = join(dir, 'dangling')
  const toDir = join(dir, 'to-dir')
  await symlink('target.txt', rel)
  await symlink(join(dir, 'target.txt'), abs)
  await symlink('../nowhere/at/all', dangling)
  await symlink('tdir', toDir)
  t.equal(await readlink(rel), 'target.txt', 'relative target text')
  t.equal(await readlink(abs), join(dir, 'target.txt'), 'absolute target text')
  t.equal(await readlink(dangling), '../nowhere/at/all', 'dangling target text')
  t.equal(await readFile(rel, 'utf8'), 'pointed at', 'read through the relative link')
  t.equal(await readFile(abs, 'utf8'), 'pointed at', 'read through the absolute link')
  t.same(await readdir(toDir), ['inside'], 'list a directory through a link')
  const ls = await lstat(rel)
  t.ok(ls.isSymbolicLink(), 'lstat says symlink')
  t.equal(ls.size, 'target.txt'.length, 'a link\'s st_size is its target length')
  t.ok((await stat(rel)).isFile(), 'stat follows the link')
  t.ok((await lstat(dangling)).isSymbolicLink(), 'a dangling link exists')
  t.equal(await errnoOf(() => stat(dangling)), 'ENOENT', 'following a dangling link')
  t.equal(await errnoOf(() => readlink(join(dir, 'target.txt'))), 'EINVAL', 'readlink of a regular file')
  await unlink(rel)
  t.equal(await readFile(join(dir, 'target.txt'), 'utf8'), 'pointed at', 'unlinking a link leaves its target')
})

t.test('mkfifo makes a FIFO that passes data between processes', async t => {
  const dir = await scratchDir(m, 'fifo')
  const fifo = join(dir, 'pipe')
  const made = await run('mkfifo', ['-m', '0644', fifo])
  t.equal(made.code, 0, `mkfifo succeeds ${made.stderr}`)
  const st = await lstat(fifo)
  t.ok(st.isFIFO(), 'stat says FIFO')
  t.equal(st.mode & 0o777, 0o644, 'with the mode asked for')
  const writer = run('sh', ['-c', 'printf "through the pipe" > "$1"', 'sh', fifo])
  t.equal(await readFile(fifo, 'utf8'), 'through the pipe', 'a reader gets what a writer sent')
  t.equal((await writer).code, 0, 'the writer finished')
  t.equal((await lstat(fifo)).size, 0, 'a FIFO stores nothing')
})
