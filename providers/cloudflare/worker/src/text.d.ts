/** Files bundled as text (wrangler.jsonc "rules"). */
declare module '*.sh' {
  const text: string;
  export default text;
}
