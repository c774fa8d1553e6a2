// Type declarations for the parts of fuse-native 2.2.6 that snapfs uses. The package ships none.
declare module 'fuse-native' {
  type Callback = (code: number, ...results: unknown[]) => void

  interface FuseOptions {
    timeout?: number | false
    force?: boolean
    mkdir?: boolean
  }

  class Fuse {
    constructor (mnt: string, ops: Record<string, (...args: any[]) => void>, opts?: FuseOptions)
    mnt: string
    mount (cb: (err: Error | null) => void): void
    unmount (cb: (err: Error | null) => void): void
    /** Builds the "-o…" string handed to libfuse; snapfs overrides it (see mount-options.ts). */
    _fuseOptions (): string
    static unmount (mnt: string, cb: (err: Error | null) => void): void
  }
  export = Fuse
  export type { Callback }
}
